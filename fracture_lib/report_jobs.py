"""Execute report notebooks (papermill) and export them as HTML, one or several at a time.

A report run is a list of ``ReportJob``s (``reports.plan_reports``). ``run_jobs`` executes them in
list order, each after the jobs it depends on (``dependencies``): the fracture models and the
body-part classifier (notebook 03) train side by side, and each evaluation (04) starts as soon as
its own model is trained. One training keeps about 1.1 of 2 CPU cores busy, so two at a time
finish the demo's four trainings sooner; each notebook's results are those it gives alone (a
kernel's threads and seeds do not depend on what else runs).

With more than one worker each notebook runs in its own process (spawned, so it sees the parent's
environment but none of its state); on the first failure the others are stopped, their kernels
included, before the error is raised, so that nothing they would write can land after it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

from fracture_lib import config
from fracture_lib.errors import FractureLibError
from fracture_lib.files import native_stderr_to, write_text_atomically

# The kernels' stderr (TensorFlow's C++ notices), beside the executed notebooks.
KERNEL_LOG_FILENAME = "kernels-stderr.log"

# TensorFlow's start-up and tracing notices on stderr: they say nothing to a reader of the report
# (the executed notebook keeps them).
_LIBRARY_NOISE = (
    "WARNING: All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "triggered tf.function retracing",
)

TRAIN_NOTEBOOK = "03_train"
EVALUATE_NOTEBOOK = "04_evaluate"


@dataclass
class ReportJob:
    """One notebook execution: which notebook, under which name, with which parameters."""

    notebook: str
    output_stem: str
    title: str
    parameters: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None


def declared_parameters(notebook_path: Path) -> set[str]:
    """Return the names defined in the notebook's ``parameters`` cell."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook_path)).keys())


def execute_notebook(job: ReportJob, source: Path, executed_dir: Path) -> Path:
    """Execute ``source`` with the job's parameters; raise FractureLibError naming the failing cell.

    The notebook runs in its own folder, receives the parameters its ``parameters`` cell declares,
    and is written to ``executed_dir/<output_stem>.ipynb``; its kernel's stderr is appended to
    ``KERNEL_LOG_FILENAME`` there.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if not source.is_file():
        raise FractureLibError(f"notebook {source} is missing: restore it with `git checkout notebooks/`")
    declared = declared_parameters(source)
    parameters = {name: value for name, value in job.parameters.items() if name in declared}
    output = executed_dir / f"{job.output_stem}.ipynb"
    try:
        with native_stderr_to(executed_dir / KERNEL_LOG_FILENAME):
            papermill.execute_notebook(str(source), str(output), parameters=parameters,
                                       kernel_name=config.KERNEL_NAME, cwd=str(source.parent), progress_bar=False)
    except PapermillExecutionError as error:
        message = str(error.evalue).strip().splitlines()
        detail = message[-1] if message else ""
        # papermill executes an injected parameters cell first; count cells as the reader
        # of the committed notebook sees them.
        cell_number = error.exec_count - 1 if parameters and error.exec_count else error.exec_count
        raise FractureLibError(
            f"notebook {job.output_stem} failed in code cell {cell_number}: {error.ename}: {detail} "
            f"(executed notebook: {output})"
        ) from None
    return output


def _execute_and_export(job: ReportJob, notebooks_dir: Path, executed_dir: Path, html_dir: Path) -> None:
    """Execute the job's notebook from ``notebooks_dir`` and write its HTML page to ``html_dir``."""
    executed = execute_notebook(job, notebooks_dir / f"{job.notebook}.ipynb", executed_dir)
    export_html(executed, html_dir / f"{job.output_stem}.html", job.title)


def _is_library_noise(output: Any) -> bool:
    """Whether a stderr output holds only TensorFlow notices (see ``_LIBRARY_NOISE``)."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    lines = [line for line in output.get("text", "").splitlines() if line.strip()]
    return bool(lines) and all(any(marker in line for marker in _LIBRARY_NOISE) for line in lines)


def export_html(executed_notebook: Path, html_path: Path, title: str) -> None:
    """Write the executed notebook as HTML with code hidden and figures embedded."""
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(str(executed_notebook), as_version=4)
    notebook.metadata["title"] = title
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if not _is_library_noise(output)]
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(notebook)
    write_text_atomically(html_path, body)


def dependencies(jobs: list[ReportJob]) -> dict[str, set[str]]:
    """The output stems each job waits for.

    Every job waits for all jobs listed before it, except that trainings (03) do not wait for one
    another, and an evaluation (04) waits for the training of its own body part only, not for
    the other trainings or evaluations. Notebook 02, which times the input pipeline, thus runs
    alone, and 05 runs last.
    """
    waits: dict[str, set[str]] = {}
    for position, job in enumerate(jobs):
        earlier = jobs[:position]
        if job.notebook == TRAIN_NOTEBOOK:
            earlier = [other for other in earlier if other.notebook != TRAIN_NOTEBOOK]
        elif job.notebook == EVALUATE_NOTEBOOK:
            part = job.parameters.get("BODY_PART")
            earlier = [other for other in earlier
                       if other.notebook not in (TRAIN_NOTEBOOK, EVALUATE_NOTEBOOK)
                       or (other.notebook == TRAIN_NOTEBOOK and other.parameters.get("BODY_PART") == part)]
        waits[job.output_stem] = {other.output_stem for other in earlier}
    return waits


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, judged without importing TensorFlow.

    ``CUDA_VISIBLE_DEVICES`` set to nothing (or -1) hides every GPU; otherwise the driver's
    device list under /proc (Linux, where TensorFlow's CUDA build runs) decides.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    driver = Path("/proc/driver/nvidia/gpus")
    return driver.is_dir() and any(driver.iterdir())


def default_workers() -> int:
    """Notebooks to run at once: 2 on a CPU-only machine with at least 2 cores, else 1.

    On a GPU one training at a time: TensorFlow takes the whole GPU memory for each process.
    """
    if gpu_visible():
        return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def run_jobs(jobs: list[ReportJob], notebooks_dir: Path, executed_dir: Path, html_dir: Path,
             workers: int = 1, progress: Callable[[str], None] = print) -> None:
    """Execute every job, export its HTML to ``html_dir``, and set its ``seconds``.

    With ``workers`` 1 the notebooks run one after the other in this process; with more, up to
    that many at a time in child processes, in the order ``dependencies`` allows. The first
    failure stops every other notebook and is raised (FractureLibError names the notebook and cell).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    numbers = {job.output_stem: number for number, job in enumerate(jobs, start=1)}

    def announce(job: ReportJob, message: str) -> None:
        progress(f"[{numbers[job.output_stem]}/{len(jobs)}] {job.output_stem} {message}")

    if workers == 1:
        for job in jobs:
            announce(job, "...")
            started = time.perf_counter()
            _execute_and_export(job, notebooks_dir, executed_dir, html_dir)
            job.seconds = time.perf_counter() - started
            announce(job, f"done in {job.seconds:.1f} s")
        return
    _run_in_processes(jobs, notebooks_dir, executed_dir, html_dir, workers, announce)


def _run_in_processes(jobs: list[ReportJob], notebooks_dir: Path, executed_dir: Path, html_dir: Path,
                      workers: int, announce: Callable[[ReportJob, str], None]) -> None:
    """``run_jobs`` with up to ``workers`` notebooks at a time, each in a spawned process."""
    context = multiprocessing.get_context("spawn")
    waits = dependencies(jobs)
    pending = list(jobs)
    finished: set[str] = set()
    running: dict[Connection, tuple[ReportJob, Any, float]] = {}
    try:
        while pending or running:
            # Start, in list order, every job whose dependencies are done, while workers are free.
            for job in [job for job in pending if waits[job.output_stem] <= finished]:
                if len(running) >= workers:
                    break
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child, name=f"report-{job.output_stem}", daemon=False,
                    args=(job, notebooks_dir, executed_dir, html_dir, sender))
                process.start()
                sender.close()
                running[receiver] = (job, process, time.perf_counter())
                pending.remove(job)
                announce(job, "...")
            for receiver in wait(list(running)):
                job, process, started = running.pop(receiver)
                try:
                    status, detail = receiver.recv()
                except EOFError:
                    process.join()
                    status, detail = "failed", (
                        f"notebook {job.output_stem} stopped unexpectedly (exit code {process.exitcode}; -9 is "
                        "often the system running out of memory): run the reports with --workers 1 to see why")
                receiver.close()
                process.join()
                if status != "done":
                    raise FractureLibError(detail)
                job.seconds = time.perf_counter() - started
                finished.add(job.output_stem)
                announce(job, f"done in {job.seconds:.1f} s")
    except BaseException:
        for job, process, _ in running.values():
            _stop(process)
        raise


def _child(job: ReportJob, notebooks_dir: Path, executed_dir: Path, html_dir: Path, sender: Connection) -> None:
    """A worker process: execute one notebook, export it, and send ("done", None) or ("failed", message)."""
    signal.signal(signal.SIGTERM, _stop_family_and_exit)
    try:
        _execute_and_export(job, notebooks_dir, executed_dir, html_dir)
    except FractureLibError as error:
        sender.send(("failed", str(error)))
    except BaseException as error:  # noqa: BLE001 - the parent reports it in one line
        sender.send(("failed", f"notebook {job.output_stem} stopped: {type(error).__name__}: {error}"))
    else:
        sender.send(("done", None))
    finally:
        sender.close()


def _stop_family_and_exit(signal_number: int, frame: Any) -> None:
    """SIGTERM in a worker: kill its kernel (and what the kernel started), reap it, and exit.

    The kernel runs in a session of its own, so it is found through the process tree; waiting
    for it here (its parent) makes sure it is gone before the report runner goes on.
    """
    import psutil

    worker = psutil.Process()
    own, family = worker.children(), worker.children(recursive=True)
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(own, timeout=30)
    os._exit(1)


def _stop(process: Any) -> None:
    """Stop a worker process and its kernel (see ``_stop_family_and_exit``); return once it is gone."""
    process.terminate()
    process.join(timeout=60)
    if process.is_alive():
        process.kill()
        process.join(timeout=30)
