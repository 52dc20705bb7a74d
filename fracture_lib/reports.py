"""Run every notebook headlessly (papermill) and export the HTML reports (nbconvert).

``run_reports`` executes 01 -> 02 -> 03 (once per body part, then the body-part classifier) ->
04 (once per body part) -> 05 with the parameters of ``params.yaml`` (overridable), on the
project's named Jupyter kernel, two notebooks at a time on a CPU-only machine (the trainings side
by side; ``report_jobs`` executes them). Everything is built in a temporary folder inside ``reports/``;
only when every notebook has succeeded does the new set replace the previous one, so a failing
notebook never leaves a half-written set behind. Executed notebooks go to ``reports/executed/``,
HTML pages (code hidden, figures embedded) to ``reports/``, and ``reports/index.html`` links them
with the headline metrics and how and when they were made.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from fracture_lib import config
from fracture_lib import parameters as parameter_files
from fracture_lib.errors import ParameterError
from fracture_lib.files import remove_path, replace_path, write_text_atomically
from fracture_lib.report_jobs import ReportJob, declared_parameters, default_workers, run_jobs

# Files and folders of a report set; they are replaced together when a new set is complete.
EXECUTED_DIRNAME = "executed"
INDEX_FILENAME = "index.html"
FAILED_BUILD_DIRNAME = ".last-failed-build"


# The body-part classifier's epoch budget in a report run. Telling elbows, hands and shoulders
# apart is easy (98% validation accuracy after two epochs on the demo set), and with the fracture
# models' 30 epochs and patience 12 it trained 18 epochs, 3.4 of make reports' minutes.
ROUTER_EPOCHS = 3


def plan_reports(parameters: dict[str, Any], router_parts: list[str] | None = None) -> list[ReportJob]:
    """List the notebook executions of a full report run, in order.

    ``router_parts`` are the classes of the body-part classifier (``train.router_parts`` of the
    data); None means the three default parts plus any other part asked for. With fewer than two
    the classifier is not trained.
    """
    parts = list(parameters["body_parts"])
    common = {key.upper(): value for key, value in parameters.items()}
    recipe = parameter_files.recipe(parameters)
    # The classifier learns body parts: no pooling of fracture films, no focal loss (binary only), no
    # fracture boxes and the pooled head (the cell head scores fractures).
    router_recipe = {**recipe, "pool_parts": [], "loss": "bce", "box_loss_weight": 0.0, "head": "pooled", "train_crop": 0}
    jobs = [
        ReportJob("01_data_exploration", "01_data_exploration", "Data exploration", dict(common)),
        ReportJob("02_preprocessing", "02_preprocessing", "Preprocessing and input pipeline", dict(common)),
    ]
    for part in parts:
        jobs.append(ReportJob("03_train", f"03_train_{part}", f"Training: {part} fracture model",
                              {**common, "BODY_PART": part, "TARGET": config.FRACTURE_TARGET, "RECIPE": recipe}))
    # The router tells apart every part the data hold enough of, so that a run restricted to one
    # fracture model still trains a usable body-part classifier.
    if router_parts is None:
        router_parts = list(dict.fromkeys([*config.DEFAULT_BODY_PARTS, *parts]))
    if len(router_parts) >= 2:
        jobs.append(ReportJob("03_train", f"03_train_{config.BODY_PART_TARGET}", "Training: body-part classifier",
                              {**common, "BODY_PART": None, "TARGET": config.BODY_PART_TARGET,
                               "BODY_PARTS": list(router_parts), "RECIPE": router_recipe,
                               "EPOCHS": min(int(parameters["epochs"]), ROUTER_EPOCHS)}))
    for part in parts:
        jobs.append(ReportJob("04_evaluate", f"04_evaluate_{part}", f"Evaluation: {part}",
                              {**common, "BODY_PART": part}))
    jobs.append(ReportJob("05_summary", "05_summary", "Summary across body parts", dict(common)))
    return jobs


def undelivered_parameters(parameters: dict[str, Any], jobs: list[ReportJob]) -> list[str]:
    """The parameters no planned notebook receives (declares in its ``parameters`` cell).

    A recipe setting counts as received when notebook 03 declares ``RECIPE``; the runner's own
    parameters (``parameter_files.RUNNER_PARAMETERS``) are used before any notebook runs. With a
    planned notebook missing nothing is listed (its absence is reported when it runs).
    """
    paths = [config.NOTEBOOKS_DIR / f"{notebook}.ipynb" for notebook in dict.fromkeys(job.notebook for job in jobs)]
    if not all(path.is_file() for path in paths):
        # Without the whole set nothing can be concluded; a missing notebook is reported when it runs.
        return []
    received: set[str] = set()
    for path in paths:
        declared = declared_parameters(path)
        received |= {name.lower() for name in declared}
        if "RECIPE" in declared:
            received |= set(parameter_files.RECIPE_PARAMETERS)
    return [key for key in parameters if key not in received and key not in parameter_files.RUNNER_PARAMETERS]


def _ensure_data(parameters: dict[str, Any], progress: Callable[[str], None]) -> Any:
    """Resolve the data source; generate the demo set first when the real MURA is absent."""
    from fracture_lib import datasets

    source = datasets.resolve_source(parameters["data_dir"])
    if source.root == config.DEMO_DATA_ROOT and parameters["data_dir"] in (None, "") and not config.real_data_available():
        from fracture_lib import synthetic

        progress(f"data/{config.MURA_DIRNAME} not found: using the synthetic demo set in {source.root}")
        kwargs: dict[str, Any] = {"seed": parameters["seed"]}
        if parameters["demo_patients"] is not None:
            kwargs["patients"] = parameters["demo_patients"]
        if parameters["demo_difficulty"] is not None:
            kwargs["difficulty"] = float(parameters["demo_difficulty"])
        started = time.perf_counter()
        synthetic.ensure_demo_dataset(source.root, **kwargs)
        progress(f"demo set ready in {time.perf_counter() - started:.1f} s")
    return source


def _git_description() -> str:
    """Return the current commit (with ``+changes`` when the tree is dirty), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=config.PROJECT_ROOT,
                                capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=config.PROJECT_ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return commit + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _headline_metrics(build_dir: Path, parameters: dict[str, Any], earlier_dir: Path | None = None) -> list[dict[str, Any]]:
    """Collect study-level headline metrics per body part from ``metrics/<part>.json``.

    A part this run did not evaluate takes its file from ``earlier_dir`` (the published set).
    """
    rows = []
    for part in parameters["body_parts"]:
        path = build_dir / "metrics" / f"{part}.json"
        if not path.is_file() and earlier_dir is not None:
            path = earlier_dir / "metrics" / f"{part}.json"
        if not path.is_file():
            continue
        document = json.loads(path.read_text())
        headline = document.get("headline", document)
        row = {"body_part": part}
        for key in ("kappa", "auroc", "sensitivity", "specificity", "accuracy", "threshold"):
            value = headline.get(key)
            if isinstance(value, dict):
                value = value.get("value")
            if isinstance(value, (int, float)):
                row[key] = float(value)
        rows.append(row)
    return rows


def write_index(build_dir: Path, jobs: list[ReportJob], parameters: dict[str, Any], data_root: Path,
                synthetic_data: bool, started: dt.datetime, command: str,
                earlier_dir: Path | None = None, source_name: str = "MURA v1.1",
                router_parts: list[str] | None = None, workers: int = 1) -> Path:
    """Write ``index.html``: links to every report, headline metrics, and how the set was made.

    For a partial run (``--only``), ``earlier_dir`` is the published set: its pages that this run
    did not remake are linked too, marked as coming from an earlier run.
    """
    finished = dt.datetime.now().astimezone()
    banner = ""
    if synthetic_data:
        banner = ('<p class="banner">These reports were made on the <b>synthetic demo dataset</b>, not on real '
                  'radiographs. Its numbers show that the pipeline works; they say nothing about clinical '
                  'performance. Place MURA v1.1 in <code>data/MURA-v1.1/</code> and run <code>make reports</code> '
                  'again for real results.</p>')
    listed = list(jobs)
    if earlier_dir is not None:
        remade = {job.output_stem for job in jobs}
        planned = plan_reports(parameters, router_parts)
        listed = [job for job in planned
                  if job.output_stem in remade or (earlier_dir / f"{job.output_stem}.html").is_file()]
        listed = [next((run for run in jobs if run.output_stem == job.output_stem), job) for job in listed]
    report_rows = "\n".join(
        f'<tr><td><a href="{html.escape(job.output_stem)}.html">{html.escape(job.title)}</a></td>'
        f'<td><a href="{EXECUTED_DIRNAME}/{html.escape(job.output_stem)}.ipynb">notebook</a></td>'
        + (f'<td class="number">{job.seconds:.0f} s</td></tr>' if job.seconds is not None
           else '<td>from an earlier run</td></tr>')
        for job in listed
    )
    partial_row = ""
    if earlier_dir is not None:
        partial_row = ("<tr><td>scope</td><td>partial run: only the pages with a run time were remade; the "
                       "others come from an earlier run</td></tr>")
    metric_rows = _headline_metrics(build_dir, parameters, earlier_dir)
    metric_names = ["kappa", "auroc", "sensitivity", "specificity", "accuracy", "threshold"]
    metrics_table = "<p>No evaluation metrics were produced.</p>"
    if metric_rows:
        header = "".join(f"<th>{name}</th>" for name in ["body part (study level, test split)"] + metric_names)
        body = "\n".join(
            "<tr><td>" + html.escape(row["body_part"]) + "</td>"
            + "".join(f'<td class="number">{row[name]:.3f}</td>' if name in row else "<td>-</td>"
                      for name in metric_names)
            + "</tr>"
            for row in metric_rows
        )
        metrics_table = f"<table><tr>{header}</tr>\n{body}</table>"
    parameter_rows = "\n".join(
        f"<tr><td><code>{html.escape(key)}</code></td><td><code>{html.escape(json.dumps(value))}</code></td></tr>"
        for key, value in parameters.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Fracture detection reports</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
.number {{ text-align: right; font-variant-numeric: tabular-nums; }}
.banner {{ background: #fff3cd; border: 1px solid #e0b000; padding: 0.8em; }}
</style></head><body>
<h1>Fracture detection reports: {html.escape(source_name)}</h1>
{banner}
<h2>Headline metrics</h2>
{metrics_table}
<p>Study probability = mean of its images' probabilities (the MURA paper's rule) unless the
parameters say otherwise; the decision threshold was chosen on the validation split. Confidence
intervals are in each evaluation report.</p>
<h2>Reports</h2>
<table><tr><th>report</th><th>executed notebook</th><th>run time</th></tr>
{report_rows}
</table>
<h2>How these reports were made</h2>
<table>
<tr><td>started</td><td>{started.isoformat(timespec="seconds")}</td></tr>
<tr><td>finished</td><td>{finished.isoformat(timespec="seconds")}</td></tr>
<tr><td>command</td><td><code>{html.escape(command)}</code></td></tr>
{partial_row}
<tr><td>notebooks at a time</td><td>{workers}{" (trainings side by side; each run time is its own wall-clock time)" if workers > 1 else ""}</td></tr>
<tr><td>code version</td><td>{html.escape(_git_description())}</td></tr>
<tr><td>data</td><td>{html.escape(source_name)}: <code>{html.escape(str(data_root))}</code>{" (synthetic demo data)" if synthetic_data else ""}</td></tr>
<tr><td>Python</td><td>{html.escape(platform.python_version())} on {html.escape(platform.platform())}</td></tr>
</table>
<h3>Parameters</h3>
<table>{parameter_rows}</table>
</body></html>
"""
    path = build_dir / INDEX_FILENAME
    write_text_atomically(path, page)
    return path


def _publish(build_dir: Path, reports_dir: Path, partial: bool = False) -> None:
    """Replace the previous report set in ``reports_dir`` with the complete one in ``build_dir``.

    A ``partial`` build (``--only``) replaces only the files it made and keeps the other pages;
    a full build also removes the earlier set's pages it did not make again.
    """
    if partial:
        for source in sorted(path for path in build_dir.rglob("*") if path.is_file()):
            replace_path(source, reports_dir / source.relative_to(build_dir))
    else:
        built = {entry.name for entry in build_dir.iterdir()}
        for entry in build_dir.iterdir():
            replace_path(entry, reports_dir / entry.name)
        # Pages of the previous set that this build did not make (a part no longer reported).
        for entry in list(reports_dir.iterdir()):
            if entry.name not in built and (entry.name.endswith(".html") or entry.name in (EXECUTED_DIRNAME, "metrics")):
                remove_path(entry)
    shutil.rmtree(build_dir, ignore_errors=True)


def _model_runs(jobs: list[ReportJob]) -> list[Path]:
    """The run folders the jobs write: notebook 03 trains them, notebook 04 writes their evaluation.json."""
    from fracture_lib import runs

    return [runs.run_dir_for(job.parameters.get("BODY_PART") or config.BODY_PART_TARGET, job.parameters["RUN_NAME"])
            for job in jobs if job.notebook in ("03_train", "04_evaluate")]


def run_reports(parameters: dict[str, Any], reports_dir: str | os.PathLike[str] | None = None,
                only: Iterable[str] | None = None, progress: Callable[[str], None] = print,
                command: str = "", workers: int | None = None) -> Path:
    """Execute the planned notebooks, export HTML, write the index, and publish the set.

    ``only`` restricts the run to notebooks whose output name starts with one of the given
    stems (for example ``["01_data_exploration"]``). ``workers`` notebooks run at a time (the
    trainings side by side, see ``report_jobs.dependencies``); None means
    ``report_jobs.default_workers()``. Returns the path of ``index.html``.

    The published reports and the models they describe always match: the run folders the jobs
    will replace are snapshotted first (``runs.RunSnapshot``); when any notebook fails they are
    put back, and what the failed run trained is kept in ``reports/.last-failed-build/models/``.
    """
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParameterError(f"workers must be a whole number >= 1 (notebooks run at a time), got {workers!r}")
    reports_dir = config.resolve_path(reports_dir or config.REPORTS_DIR)
    reports_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now().astimezone()
    import warnings

    from fracture_lib import datasets, runs

    source = _ensure_data(parameters, progress)
    # Read the source once now: a source that cannot be read fails before any notebook runs, and
    # the body-part classifier learns the parts it holds enough of.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # notebook 01 reports the source's quirks
        index = datasets.build_index(source, seed=parameters["seed"])
    absent = [part for part in parameters["body_parts"] if part not in set(index["body_part"])]
    if absent:
        present = ", ".join(datasets.sort_parts(index["body_part"].unique()))
        raise ParameterError(f"{source.name} at {source.location} has no images of {', '.join(absent)} "
                             f"(present: {present}): choose PARTS from those")
    router_parts = datasets.classifier_parts(index)
    if len(router_parts) < 2:
        progress(f"{source.name} holds enough images of {len(router_parts)} body part(s) only "
                 f"({', '.join(router_parts) or 'none'}): the body-part classifier is not trained; "
                 "`predict` then needs --part")
    jobs = plan_reports(parameters, router_parts)
    undelivered = undelivered_parameters(parameters, plan_reports(parameters))
    if undelivered:
        raise ParameterError(f"parameter(s) {', '.join(undelivered)} reach no notebook: a notebook must declare "
                             "each one (or drop it from the parameter file)")
    if only:
        prefixes = tuple(item.strip() for item in only if item.strip())
        jobs = [job for job in jobs if job.output_stem.startswith(prefixes) or job.notebook.startswith(prefixes)]
        if not jobs:
            raise ParameterError(f"--only {','.join(prefixes)} matches no notebook: use stems like 01_data_exploration")

    data_root = source.location
    synthetic_data = source.synthetic
    for job in jobs:
        job.parameters["DATA_DIR"] = str(source.location)

    build_dir = reports_dir / f".build-{started.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    executed_dir = build_dir / EXECUTED_DIRNAME
    executed_dir.mkdir(parents=True)
    # The notebooks write reports/metrics/ through config.METRICS_DIR: point it into the build.
    previous_reports_env = os.environ.get("FRACTURE_REPORTS_DIR")
    os.environ["FRACTURE_REPORTS_DIR"] = str(build_dir)
    snapshot = runs.RunSnapshot.take(_model_runs(jobs))
    clock = time.perf_counter()
    try:
        run_jobs(jobs, config.NOTEBOOKS_DIR, executed_dir, build_dir, workers=workers, progress=progress)
        index = write_index(build_dir, jobs, parameters, data_root, synthetic_data, started, command,
                            earlier_dir=reports_dir if only else None, source_name=source.name,
                            router_parts=router_parts, workers=workers)
    except BaseException:
        failed = reports_dir / FAILED_BUILD_DIRNAME
        shutil.rmtree(failed, ignore_errors=True)
        if build_dir.exists():
            os.replace(build_dir, failed)
        moved = snapshot.restore(failed / "models")
        progress(f"the previous reports in {reports_dir} and the models they describe were left in place; "
                 f"this run's partial output is in {failed}"
                 + (f" (the {len(moved)} run(s) it trained or evaluated in {failed / 'models'})" if moved else ""))
        raise
    finally:
        if previous_reports_env is None:
            os.environ.pop("FRACTURE_REPORTS_DIR", None)
        else:
            os.environ["FRACTURE_REPORTS_DIR"] = previous_reports_env
    _publish(build_dir, reports_dir, partial=bool(only))
    snapshot.discard()
    shutil.rmtree(reports_dir / FAILED_BUILD_DIRNAME, ignore_errors=True)
    progress(f"wrote {len(jobs)} reports in {time.perf_counter() - clock:.0f} s "
             f"({workers} notebook(s) at a time): {reports_dir / index.name}")
    return reports_dir / index.name


def command_line() -> str:
    """Return the command that started this process, for the index page."""
    return " ".join([Path(sys.executable).name, *sys.argv])
