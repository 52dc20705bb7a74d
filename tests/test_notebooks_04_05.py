"""Notebooks 04 (evaluation) and 05 (summary) run end to end through papermill on the tiny runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from conftest import notebook_outputs, notebook_text, run_notebook
from fracture_lib import error_analysis, evaluation as evaluation_module, metrics, runs

# The notebooks write evaluation.json into the run: they evaluate copies in a models folder of
# their own, so the shared tiny runs stay as other tests expect them (without a threshold).
RUN_NAME = "tiny-evaluated"
N_BOOTSTRAP = 40


def figure_count(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for output in notebook_outputs(notebook))


def assert_no_errors(notebook: nbformat.NotebookNode) -> None:
    errors = [output for output in notebook_outputs(notebook) if output.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""


@pytest.fixture(scope="module")
def executed(tiny_runs, tiny_demo_root: Path, tmp_path_factory) -> dict:
    """Run 04 for elbow (Youden threshold) then 05 for elbow and hand (hand has no model)."""
    work = tmp_path_factory.mktemp("notebooks-04-05")
    run_dirs = {name: work / "models" / name / RUN_NAME for name in tiny_runs}
    for name, run_dir in tiny_runs.items():
        shutil.copytree(run_dir, run_dirs[name])
    reports_dir = work / "reports"
    with pytest.MonkeyPatch.context() as patch:
        # The kernels inherit the environment: runs and metrics in this test's own folders.
        patch.setenv("FRACTURE_MODELS_DIR", str(work / "models"))
        patch.setenv("FRACTURE_REPORTS_DIR", str(reports_dir))
        evaluate = run_notebook("04_evaluate", work, {
            "BODY_PART": "elbow", "RUN_NAME": RUN_NAME, "DATA_DIR": str(tiny_demo_root),
            "AGGREGATION": "mean", "THRESHOLD_METHOD": "youden", "N_BOOTSTRAP": N_BOOTSTRAP, "SEED": 0,
        })
        summary = run_notebook("05_summary", work, {
            "BODY_PARTS": ["elbow", "hand"], "RUN_NAME": RUN_NAME, "DATA_DIR": str(tiny_demo_root), "SPLIT_SEED": 0,
        })
    return {
        "04": nbformat.read(evaluate, as_version=4),
        "05": nbformat.read(summary, as_version=4),
        "run_dirs": run_dirs,
        "metrics_dir": reports_dir / "metrics",
    }


@pytest.mark.slow
def test_notebook_04_evaluates_and_saves(executed, tiny_demo_root: Path) -> None:
    from fracture_lib import datasets, train

    notebook = executed["04"]
    assert_no_errors(notebook)
    text = notebook_text(notebook)
    assert "SYNTHETIC DATA" in text
    # Learning curves, ROC/PR, confusion matrices, reliability, histograms, Grad-CAM gallery.
    assert figure_count(notebook) == 6
    run_dir = executed["run_dirs"]["elbow"]
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["threshold_method"] == "youden" and evaluation["aggregation"] == "mean"
    document = json.loads((executed["metrics_dir"] / "elbow.json").read_text())
    assert document["n_bootstrap"] == N_BOOTSTRAP and document["seed"] == 0
    # The same evaluation computed here gives the same threshold, estimates and intervals.
    run = runs.load_run(run_dir)
    index = datasets.build_index(tiny_demo_root, parts=["elbow"], seed=run.config["split_seed"])
    result = evaluation_module.evaluate(pd.read_csv(run_dir / "val_predictions.csv"),
                              train.predict_split(run, index, tiny_demo_root, split="test"),
                              threshold_method="youden", n_boot=N_BOOTSTRAP, seed=0)
    assert evaluation["threshold"] == pytest.approx(result.threshold)
    assert evaluation["study"]["auroc"] == pytest.approx(result.metric("auroc"))
    kappa = document["headline"]["kappa"]
    row = result.table.query("split == 'test' and level == 'study' and metric == 'kappa'").iloc[0]
    assert kappa["value"] == pytest.approx(row["value"]) and kappa["ci_low"] == pytest.approx(row["ci_low"])
    # The pointing game was played on the synthetic boxes and reported beside chance.
    pointing = document["extra"]["pointing_game"]
    assert pointing["n"] > 0 and 0 < pointing["chance_rate"] < 1
    assert f"{pointing['hits']} of {pointing['n']}" in text and "chance rate" in text
    # Error analysis names the most confident wrong study.
    mistakes = error_analysis.most_confident_mistakes(result.predictions["test"]["study"], result.threshold)
    assert len(mistakes) and mistakes.loc[0, "study"] in text
    assert f"Threshold **{result.threshold:.3f}** (youden" in text


@pytest.mark.slow
def test_notebook_05_summarises_and_reports_missing_parts(executed) -> None:
    notebook = executed["05"]
    assert_no_errors(notebook)
    text = notebook_text(notebook)
    assert "SYNTHETIC DATA" in text
    model_card = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    assert "not a medical device" in model_card and "Intended use" in model_card
    document = json.loads((executed["metrics_dir"] / "elbow.json").read_text())
    kappa = document["headline"]["kappa"]
    assert metrics.format_interval(kappa["value"], kappa["ci_low"], kappa["ci_high"]) in text
    assert "0.710" in text  # the MURA paper's elbow kappa beside ours
    # hand has neither a model nor metrics: reported, not crashed on.
    assert "Not evaluated yet:** hand" in text and "hand: no fracture model" in text
    assert "routed to their true part" in text and "two stages" in text
    # The comparison chart and the body-part confusion matrix.
    assert figure_count(notebook) == 2
    # The classifier's accuracy per image and per study, and the model card's settings table.
    assert "balanced accuracy" in text and ">small_cnn<" in text and ">body_part<" in text
