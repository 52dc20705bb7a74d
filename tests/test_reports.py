"""The report runner: parameters, planning, failure handling and a tiny end-to-end run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fracture_lib import config, report_jobs, reports
from fracture_lib import parameters as parameter_files
from fracture_lib.errors import FractureLibError


def test_plan_runs_every_stage_in_order() -> None:
    parameters = parameter_files.load_parameters(overrides={"body_parts": ["elbow", "hand"]})
    stems = [job.output_stem for job in reports.plan_reports(parameters)]
    assert stems == [
        "01_data_exploration", "02_preprocessing", "03_train_elbow", "03_train_hand", "03_train_body_part",
        "04_evaluate_elbow", "04_evaluate_hand", "05_summary",
    ]
    jobs = {job.output_stem: job for job in reports.plan_reports(parameters)}
    assert jobs["03_train_body_part"].parameters["TARGET"] == config.BODY_PART_TARGET
    assert jobs["04_evaluate_hand"].parameters["BODY_PART"] == "hand"
    # Fracture models for two parts, but the router still tells all three default parts apart.
    assert jobs["03_train_elbow"].parameters["BODY_PARTS"] == ["elbow", "hand"]
    assert jobs["03_train_body_part"].parameters["BODY_PARTS"] == ["elbow", "hand", "shoulder"]
    # The classifier gets a few epochs; the fracture models the recipe's.
    assert jobs["03_train_body_part"].parameters["EPOCHS"] == reports.ROUTER_EPOCHS < parameters["epochs"]
    assert jobs["03_train_elbow"].parameters["EPOCHS"] == parameters["epochs"]


def test_classifier_learns_the_parts_the_data_hold(tmp_path: Path) -> None:
    import warnings

    from source_fixtures import write_fracatlas

    from fracture_lib import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        index = datasets.build_index(write_fracatlas(tmp_path / "fracatlas"))
    # Hand and leg have enough films; the one mixed (hand + shoulder) film is no class.
    assert datasets.classifier_parts(index) == ["hand", "leg"]
    assert datasets.classifier_parts(index, minimum=1000) == []
    parameters = parameter_files.load_parameters(overrides={"body_parts": ["hand", "leg"]})
    router = {job.output_stem: job for job in reports.plan_reports(parameters, ["hand", "leg", "hip"])}
    assert router["03_train_body_part"].parameters["BODY_PARTS"] == ["hand", "leg", "hip"]
    # With a single part there is nothing to route: no classifier is trained.
    stems = [job.output_stem for job in reports.plan_reports(parameters, ["hand"])]
    assert "03_train_body_part" not in stems and "05_summary" in stems


def test_failing_notebook_keeps_previous_reports(tmp_path: Path, tiny_demo_root: Path, monkeypatch) -> None:
    # A previous, complete report set.
    reports_dir = tmp_path / "reports"
    reports_dir.mkdir()
    (reports_dir / "index.html").write_text("previous set")
    # A notebook folder whose 01 notebook fails on purpose.
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": config.KERNEL_NAME, "display_name": "Python (fracture)", "language": "python"}
    notebook.cells = [
        nbformat.v4.new_code_cell("DATA_DIR = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("raise ValueError('bad cell on purpose')"),
    ]
    nbformat.write(notebook, str(notebooks / "01_data_exploration.ipynb"))
    monkeypatch.setattr(config, "NOTEBOOKS_DIR", notebooks)
    parameters = parameter_files.load_parameters(overrides={"data_dir": str(tiny_demo_root)})
    with pytest.raises(FractureLibError, match=r"01_data_exploration failed in code cell 2: ValueError: bad cell on purpose"):
        reports.run_reports(parameters, reports_dir=reports_dir, only=["01_data_exploration"], progress=lambda _: None)
    assert (reports_dir / "index.html").read_text() == "previous set"
    assert (reports_dir / reports.FAILED_BUILD_DIRNAME / "executed" / "01_data_exploration.ipynb").is_file()
    assert not list(reports_dir.glob(".build-*"))


def _write_notebook(path: Path, parameters: str, code: str) -> None:
    """A notebook with one ``parameters`` cell and one code cell, on the project kernel."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": config.KERNEL_NAME, "display_name": "Python (fracture)", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                      nbformat.v4.new_code_cell(code)]
    nbformat.write(notebook, str(path))


@pytest.mark.parametrize("evaluation_fails", [True, False])
def test_failed_reports_put_the_models_they_replaced_back(tmp_path: Path, tiny_demo_root: Path, monkeypatch,
                                                          evaluation_fails: bool) -> None:
    models_dir, reports_dir, notebooks = tmp_path / "models", tmp_path / "reports", tmp_path / "notebooks"
    monkeypatch.setenv("FRACTURE_MODELS_DIR", str(models_dir))
    monkeypatch.setattr(config, "MODELS_DIR", models_dir)
    monkeypatch.setattr(config, "NOTEBOOKS_DIR", notebooks)
    notebooks.mkdir()
    # The models and reports of an earlier, successful run.
    run_dir = models_dir / "elbow" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "model.keras").write_text("old model")
    (run_dir / "evaluation.json").write_text('{"threshold": 0.4}')
    reports_dir.mkdir()
    (reports_dir / "04_evaluate_elbow.html").write_text("report of the old model")
    # Notebook 03 retrains the run (a new folder swapped in); notebook 04 rewrites its evaluation, then may fail.
    declared = 'BODY_PART = "elbow"\nRUN_NAME = "default"\nDATA_DIR = None'
    _write_notebook(notebooks / "03_train.ipynb", declared,
                    "from fracture_lib import config, files\n"
                    "staging = config.MODELS_DIR / BODY_PART / '.partial-new'\n"
                    "staging.mkdir(parents=True)\n"
                    "(staging / 'model.keras').write_text('new model')\n"
                    "files.replace_path(staging, config.MODELS_DIR / BODY_PART / RUN_NAME)")
    _write_notebook(notebooks / "04_evaluate.ipynb", declared,
                    "from fracture_lib import config, files\n"
                    "files.write_text_atomically(config.MODELS_DIR / BODY_PART / RUN_NAME / 'evaluation.json', '{}')\n"
                    + ("raise ValueError('evaluation broke on purpose')" if evaluation_fails else "print('evaluated')"))
    parameters = parameter_files.load_parameters(overrides={"data_dir": str(tiny_demo_root), "body_parts": ["elbow"]})
    only = ["03_train_elbow", "04_evaluate_elbow"]
    if evaluation_fails:
        with pytest.raises(FractureLibError, match="04_evaluate_elbow failed in code cell 2"):
            reports.run_reports(parameters, reports_dir=reports_dir, only=only, progress=lambda _: None)
        # The old model and its evaluation are back, as the old report describes them.
        assert (run_dir / "model.keras").read_text() == "old model"
        assert (run_dir / "evaluation.json").read_text() == '{"threshold": 0.4}'
        assert (reports_dir / "04_evaluate_elbow.html").read_text() == "report of the old model"
        # What the failed run trained is kept beside its partial reports.
        kept = reports_dir / reports.FAILED_BUILD_DIRNAME / "models" / "elbow" / "default"
        assert (kept / "model.keras").read_text() == "new model"
    else:
        reports.run_reports(parameters, reports_dir=reports_dir, only=only, progress=lambda _: None)
        assert (run_dir / "model.keras").read_text() == "new model"
        assert (run_dir / "evaluation.json").read_text() == "{}"
        assert (reports_dir / "04_evaluate_elbow.html").read_text() != "report of the old model"
    # No snapshot or work folder is left behind either way.
    assert sorted(path.name for path in (models_dir / "elbow").iterdir()) == ["default"]


@pytest.mark.slow
def test_make_reports_end_to_end(tmp_path: Path, tiny_demo_root: Path) -> None:
    """`make reports` with tiny parameters writes index.html whose links all resolve."""
    reports_dir = tmp_path / "reports"
    make = shutil.which("make")
    command = [
        make, "-C", str(config.PROJECT_ROOT), "reports", f"DATA_DIR={tiny_demo_root}", "PARTS=elbow",
        "EPOCHS=1", "IMG_SIZE=64", "BATCH_SIZE=16", "RUN_NAME=e2e",
    ]
    environment = {"FRACTURE_REPORTS_DIR": str(reports_dir)}
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=900,
        env={**__import__("os").environ, **environment, "PYTHON": sys.executable},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    index = reports_dir / "index.html"
    assert index.is_file()
    page = index.read_text()
    assert "synthetic demo dataset" in page
    links = re.findall(r'href="([^"]+)"', page)
    assert "03_train_body_part.html" in links and "04_evaluate_elbow.html" in links and "05_summary.html" in links
    for link in links:
        assert (reports_dir / link).is_file(), f"broken link {link}"
    assert (reports_dir / "metrics" / "elbow.json").is_file()
    assert "[6/6] 05_summary done" in completed.stdout
    # The kernels' stderr (TensorFlow's notices, where this CPU prints them) goes to a log beside
    # the executed notebooks, not the terminal.
    assert "oneDNN" not in completed.stdout + completed.stderr
    kernel_log = (reports_dir / "executed" / report_jobs.KERNEL_LOG_FILENAME).read_text()
    for line in kernel_log.splitlines()[:20]:
        assert line not in completed.stdout + completed.stderr


def test_html_drops_tensorflow_notices_but_keeps_real_warnings(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("import tensorflow")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=(
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1 port.cc:153] oneDNN custom operations are on. You may see slightly different results\n")),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: 3 images could not be read\n"),
        nbformat.v4.new_output("stream", name="stdout", text="oneDNN custom operations are on (printed on purpose)\n"),
    ]
    notebook.cells = [cell]
    executed = tmp_path / "executed.ipynb"
    nbformat.write(notebook, str(executed))
    report_jobs.export_html(executed, tmp_path / "page.html", "A page")
    page = (tmp_path / "page.html").read_text()
    assert "absl::InitializeLog" not in page and "port.cc" not in page
    assert "3 images could not be read" in page and "printed on purpose" in page


@pytest.mark.slow
def test_partial_run_keeps_the_other_pages(tmp_path: Path, tiny_demo_root: Path) -> None:
    # A published set with a summary page and an elbow evaluation.
    reports_dir = tmp_path / "reports"
    (reports_dir / "metrics").mkdir(parents=True)
    (reports_dir / "05_summary.html").write_text("summary of an earlier run")
    (reports_dir / "01_data_exploration.html").write_text("old exploration")
    (reports_dir / "metrics" / "elbow.json").write_text(json.dumps({"headline": {"kappa": {"value": 0.5}}}))
    parameters = parameter_files.load_parameters(overrides={"data_dir": str(tiny_demo_root), "body_parts": ["elbow"]})
    index = reports.run_reports(parameters, reports_dir=reports_dir, only=["01_data_exploration"],
                                progress=lambda _: None)
    # The remade page replaced the old one; the others are still there and linked.
    assert (reports_dir / "01_data_exploration.html").read_text() != "old exploration"
    assert (reports_dir / "05_summary.html").read_text() == "summary of an earlier run"
    assert (reports_dir / "executed" / "01_data_exploration.ipynb").is_file()
    page = index.read_text()
    links = re.findall(r'href="([^"]+\.html)"', page)
    assert links == ["01_data_exploration.html", "05_summary.html"]
    assert "from an earlier run" in page and "partial run" in page
    assert "0.500" in page  # the earlier elbow kappa is still in the headline table
    assert not list(reports_dir.glob(".build-*"))


@pytest.mark.slow
def test_reports_run_on_a_fracatlas_folder(tmp_path: Path) -> None:
    from source_fixtures import write_fracatlas

    from fracture_lib.train import TrainConfig, train_model

    root = write_fracatlas(tmp_path / "fracatlas")
    reports_dir = tmp_path / "reports"
    # The hand model is trained here, in this process (the training notebook itself is tested on
    # the demo set); the exploration, evaluation and summary notebooks then run on FracAtlas.
    train_model(TrainConfig(body_part="hand", data_dir=str(root), epochs=1, img_size=64, batch_size=16,
                            run_name="fracatlas-e2e", seed=0), verbose=0)
    parameters = parameter_files.load_parameters(overrides={
        "data_dir": str(root), "body_parts": ["hand"], "epochs": 1, "img_size": 64, "batch_size": 16,
        "n_bootstrap": 30, "run_name": "fracatlas-e2e", "seed": 0})
    index = reports.run_reports(parameters, reports_dir=reports_dir, progress=lambda _: None,
                                only=["01_data_exploration", "04_evaluate", "05_summary"])
    page = index.read_text()
    assert "Fracture detection reports: FracAtlas" in page and "synthetic demo dataset" not in page
    links = re.findall(r'href="([^"]+\.html)"', page)
    assert links == ["01_data_exploration.html", "04_evaluate_hand.html", "05_summary.html"]
    exploration = (reports_dir / "01_data_exploration.html").read_text()
    for words in ("byte-identical films", "truncated JPEG", "contradicts their folder", "show several body parts",
                  "Abedeen et al.", "holds a single film"):
        assert words in exploration, words
    evaluation_page = (reports_dir / "04_evaluate_hand.html").read_text()
    assert "inside the fracture box" in evaluation_page and "chance rate" in evaluation_page
    assert "SYNTHETIC DATA" not in evaluation_page
    summary = (reports_dir / "05_summary.html").read_text()
    assert "MURA paper&#x27;s kappas are not shown" in summary or "MURA paper's kappas are not shown" in summary
    assert (reports_dir / "metrics" / "hand.json").is_file()
