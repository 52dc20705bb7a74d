"""Executing report notebooks: dependencies, two at a time, and stopping everything on a failure."""

from __future__ import annotations

from pathlib import Path

import nbformat
import psutil
import pytest

from fracture_lib import config, report_jobs, reports
from fracture_lib import parameters as parameter_files
from fracture_lib.errors import FractureLibError, ParameterError
from fracture_lib.report_jobs import ReportJob


def test_trainings_wait_for_the_cache_and_evaluations_for_their_own_model() -> None:
    parameters = parameter_files.load_parameters(overrides={"body_parts": ["elbow", "hand"]})
    waits = report_jobs.dependencies(reports.plan_reports(parameters))
    assert waits["01_data_exploration"] == set()
    # Notebook 02 times the input pipeline: nothing runs beside it.
    assert waits["02_preprocessing"] == {"01_data_exploration"}
    start = {"01_data_exploration", "02_preprocessing"}
    for training in ("03_train_elbow", "03_train_hand", "03_train_body_part"):
        assert waits[training] == start
    assert waits["04_evaluate_elbow"] == start | {"03_train_elbow"}
    assert waits["04_evaluate_hand"] == start | {"03_train_hand"}
    assert waits["05_summary"] == set(waits) - {"05_summary"}


def test_gpu_hidden_by_cuda_visible_devices_means_two_workers_on_two_cores(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(report_jobs.os, "cpu_count", lambda: 2)
    assert not report_jobs.gpu_visible()
    assert report_jobs.default_workers() == 2
    monkeypatch.setattr(report_jobs.os, "cpu_count", lambda: 1)
    assert report_jobs.default_workers() == 1
    monkeypatch.setattr(report_jobs, "gpu_visible", lambda: True)
    monkeypatch.setattr(report_jobs.os, "cpu_count", lambda: 16)
    assert report_jobs.default_workers() == 1


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_counts_are_refused(workers, tmp_path: Path, tiny_demo_root: Path) -> None:
    parameters = parameter_files.load_parameters(overrides={"data_dir": str(tiny_demo_root)})
    with pytest.raises(ParameterError, match="workers must be a whole number"):
        reports.run_reports(parameters, reports_dir=tmp_path / "reports", workers=workers, progress=lambda _: None)
    with pytest.raises(ValueError, match="workers"):
        report_jobs.run_jobs([], tmp_path, tmp_path, tmp_path, workers=0)


def _write_notebook(path: Path, code: str) -> None:
    """A notebook on the project kernel with a ``parameters`` cell (BODY_PART, MARKS) and one code cell."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": config.KERNEL_NAME, "display_name": "Python (fracture)", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell('BODY_PART = None\nMARKS = None', metadata={"tags": ["parameters"]}),
                      nbformat.v4.new_code_cell(code)]
    nbformat.write(notebook, str(path))


# A training that leaves a mark, then waits (up to a minute) for the other part's training to have
# started: it can only finish when both run at the same time.
_TRAIN_BESIDE_THE_OTHER = """
import os, pathlib, time
marks = pathlib.Path(MARKS)
(marks / f"{BODY_PART}.started").write_text(str(os.getpid()))
other = "hand" if BODY_PART == "elbow" else "elbow"
deadline = time.monotonic() + 60
while not (marks / f"{other}.started").exists():
    if time.monotonic() > deadline:
        raise RuntimeError(f"{BODY_PART} trained alone")
    time.sleep(0.05)
(marks / f"{BODY_PART}.trained").write_text("")
"""


def _jobs(marks: Path) -> list[ReportJob]:
    return [ReportJob(notebook, f"{notebook}_{part}", f"{notebook} {part}", {"BODY_PART": part, "MARKS": str(marks)})
            for notebook in ("03_train", "04_evaluate") for part in ("elbow", "hand")]


def test_two_trainings_run_side_by_side_and_each_evaluation_waits_for_its_model(tmp_path: Path) -> None:
    notebooks, executed, marks = tmp_path / "notebooks", tmp_path / "executed", tmp_path / "marks"
    for folder in (notebooks, executed, marks):
        folder.mkdir()
    _write_notebook(notebooks / "03_train.ipynb", _TRAIN_BESIDE_THE_OTHER)
    _write_notebook(notebooks / "04_evaluate.ipynb",
                    "import pathlib\nassert (pathlib.Path(MARKS) / f'{BODY_PART}.trained').exists(), 'no model yet'\n"
                    "print(f'evaluated {BODY_PART}')")
    jobs, lines = _jobs(marks), []
    report_jobs.run_jobs(jobs, notebooks, executed, tmp_path, workers=2, progress=lines.append)
    for job in jobs:
        assert (tmp_path / f"{job.output_stem}.html").is_file()
        assert job.seconds is not None and job.seconds > 0
    assert "evaluated hand" in (tmp_path / "04_evaluate_hand.html").read_text()
    assert "[1/4] 03_train_elbow ..." in lines and any(line.startswith("[4/4] 04_evaluate_hand done in") for line in lines)
    # Each notebook ran in its own kernel.
    assert (marks / "elbow.started").read_text() != (marks / "hand.started").read_text()


def test_a_failure_stops_the_notebook_running_beside_it(tmp_path: Path) -> None:
    notebooks, executed, marks = tmp_path / "notebooks", tmp_path / "executed", tmp_path / "marks"
    for folder in (notebooks, executed, marks):
        folder.mkdir()
    # The elbow training fails once the hand training is under way; the hand one would take two minutes.
    _write_notebook(notebooks / "03_train.ipynb", """
import os, pathlib, time
marks = pathlib.Path(MARKS)
(marks / f"{BODY_PART}.started").write_text(str(os.getpid()))
if BODY_PART == "elbow":
    while not (marks / "hand.started").exists():
        time.sleep(0.05)
    raise ValueError("elbow broke on purpose")
time.sleep(120)
(marks / "hand.trained").write_text("")
""")
    _write_notebook(notebooks / "04_evaluate.ipynb", "print('never run')")
    jobs = _jobs(marks)
    with pytest.raises(FractureLibError, match=r"03_train_elbow failed in code cell 2: ValueError: elbow broke on purpose"):
        report_jobs.run_jobs(jobs, notebooks, executed, tmp_path, workers=2, progress=lambda _: None)
    # The hand kernel is gone (or a zombie waiting to be reaped), and it wrote nothing more.
    kernel = int((marks / "hand.started").read_text())
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
    assert not (marks / "hand.trained").exists()
    assert not list(tmp_path.glob("04_evaluate_*.html"))


def test_a_worker_that_dies_is_reported_in_one_line(tmp_path: Path) -> None:
    notebooks, executed = tmp_path / "notebooks", tmp_path / "executed"
    for folder in (notebooks, executed):
        folder.mkdir()
    # The kernel kills the worker process that runs it, as the system does when memory runs out.
    _write_notebook(notebooks / "03_train.ipynb", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    jobs = [ReportJob("03_train", "03_train_elbow", "elbow", {"BODY_PART": "elbow"})]
    with pytest.raises(FractureLibError, match=r"03_train_elbow stopped unexpectedly \(exit code -9.*--workers 1"):
        report_jobs.run_jobs(jobs, notebooks, executed, tmp_path, workers=2, progress=lambda _: None)
