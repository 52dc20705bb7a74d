"""Tests for evaluation results: ``evaluation.evaluate`` and its files, summaries, error analysis, figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fracture_lib import error_analysis, evaluation, metrics, routing, summary
from fracture_lib.errors import ParameterError
from test_metrics import image_table


def split_predictions(seed: int, patients: int = 40) -> pd.DataFrame:
    """Image predictions of ``patients`` patients with one or two studies of two images."""
    random = np.random.default_rng(seed)
    rows = []
    for patient in range(patients):
        for study in range(1 + patient % 2):
            label = int(random.integers(0, 2))
            for image in range(2):
                probability = float(np.clip(0.3 + 0.4 * label + random.normal(0, 0.2), 0, 1))
                rows.append({"path": f"p{patient}/s{study}/image{image}.png", "study": f"p{patient}/s{study}",
                             "patient": f"p{patient}", "label": label, "probability": probability})
    return pd.DataFrame(rows)


def test_evaluate_chooses_the_threshold_on_val_and_applies_it_to_test() -> None:
    val, test = split_predictions(0), split_predictions(1)
    result = evaluation.evaluate(val, test, threshold_method="youden", n_boot=200, seed=0)
    val_studies = metrics.aggregate_studies(val)
    assert result.threshold == metrics.choose_threshold(val_studies["label"], val_studies["probability"], "youden")
    assert list(result.table.columns) == metrics.TABLE_COLUMNS
    assert len(result.table) == 2 * 2 * len(metrics.METRIC_NAMES)
    test_studies = metrics.aggregate_studies(test)
    expected = metrics.binary_metrics(test_studies["label"], test_studies["probability"], result.threshold)
    assert result.metric("kappa") == pytest.approx(expected["kappa"])
    assert result.metric("auroc", level="image") == pytest.approx(roc_auc_score(test["label"], test["probability"]))
    assert result.counts["test"]["study"]["n"] == test["study"].nunique()
    assert result.predictions["test"]["study"]["predicted"].tolist() == (
        (test_studies["probability"] >= result.threshold).astype(int).tolist())
    wide = result.wide()
    assert list(wide.columns) == ["image", "study"] and "[" in wide.loc["kappa", "study"]


def test_save_evaluation_writes_both_files(tmp_path: Path) -> None:
    result = evaluation.evaluate(split_predictions(0), split_predictions(1), n_boot=50, seed=0)
    run_dir = tmp_path / "models" / "elbow" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "evaluation.json").write_text("previous")
    evaluation_path, metrics_path = evaluation.save_evaluation(
        result, run_dir, tmp_path / "metrics" / "elbow.json",
        extra={"pointing_game": {"hit_rate": 0.5, "hits": np.int64(3)}, "unplayed": {"hit_rate": math.nan}})
    saved = json.loads(evaluation_path.read_text())
    assert saved["threshold"] == 0.5 and saved["threshold_method"] == "fixed"
    assert saved["aggregation"] == "mean" and saved["body_part"] == "elbow"
    assert saved["study"]["kappa"] == pytest.approx(result.metric("kappa"))
    assert set(saved["study"]) == set(metrics.HEADLINE_METRICS)
    document = json.loads(metrics_path.read_text())
    assert document["headline"]["auroc"]["value"] == pytest.approx(result.metric("auroc"))
    assert document["metrics"]["val"]["image"]["ece"]["ci_low"] is not None
    assert document["extra"]["pointing_game"] == {"hit_rate": 0.5, "hits": 3}
    assert document["extra"]["unplayed"]["hit_rate"] is None
    assert not list(tmp_path.rglob("*.tmp"))
    table = summary.summary_table(["elbow", "hand"], tmp_path / "metrics")
    assert table.loc[0, "status"] == "ok" and table.loc[0, "kappa"] == pytest.approx(result.metric("kappa"))
    assert table.loc[1, "status"].startswith("no metrics") and math.isnan(table.loc[1, "kappa"])


def test_most_confident_mistakes() -> None:
    table = image_table()
    mistakes = error_analysis.most_confident_mistakes(table, threshold=0.5)
    # Wrong: image0 (abnormal at 0.2, 0.3 away) and image3 (normal at 0.6, 0.1 away).
    assert mistakes["path"].tolist() == ["image0.png", "image3.png"]
    assert mistakes["error"].tolist() == ["false negative", "false positive"]


def test_evaluation_figures_are_titled_and_labelled() -> None:
    from fracture_lib.plots import evaluation as evaluation_plots

    result = evaluation.evaluate(split_predictions(0), split_predictions(1), n_boot=20, seed=0)
    levels = result.predictions["test"]
    figures = [
        evaluation_plots.plot_roc_pr(levels, result.threshold),
        evaluation_plots.plot_confusion_matrices(levels, result.threshold),
        evaluation_plots.plot_reliability(levels),
        evaluation_plots.plot_probability_histograms(levels, result.threshold),
    ]
    table = pd.DataFrame([{"body_part": "elbow", "status": "ok", "kappa": 0.6, "kappa_ci_low": 0.5,
                           "kappa_ci_high": 0.7, "auroc": 0.9, "auroc_ci_low": 0.85, "auroc_ci_high": 0.95}])
    figures.append(evaluation_plots.plot_summary_comparison(table, summary.MURA_PAPER_KAPPA, ("kappa", "auroc")))
    confusion = routing.classifier_metrics(["elbow", "hand"], ["elbow", "elbow"], ["elbow", "hand"])["confusion"]
    figures.append(evaluation_plots.plot_body_part_confusion(confusion))
    for figure in figures:
        assert figure.get_suptitle() or any(axis.get_title() for axis in figure.axes)
        for axis in figure.axes:
            if axis.get_visible() and axis.has_data():
                assert axis.get_xlabel() and axis.get_ylabel()
    # The confusion matrix annotates the study-level counts.
    texts = [text.get_text() for text in figures[1].axes[1].texts]
    counts = result.counts["test"]["study"]
    assert texts[0].startswith(f"{counts['tn']}\n") and texts[3].startswith(f"{counts['tp']}\n")


def test_gradcam_gallery_rows() -> None:
    from fracture_lib.plots import evaluation as evaluation_plots

    overlays = [np.zeros((8, 8, 3), np.uint8)] * 3
    outcomes = [evaluation_plots.outcome(1, 1), evaluation_plots.outcome(0, 1), evaluation_plots.outcome(1, 1)]
    assert outcomes == ["true positive", "false positive", "true positive"]
    figure = evaluation_plots.plot_gradcam_gallery(overlays, outcomes, ["a", "b", "c"], boxes=[(1, 1, 4, 4), None, None],
                                                   peaks=[(2, 2), None, None], columns=2)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:4] == ["a", "c", "b", ""]
    assert any(text.get_text() == "no false negatives" for axis in figure.axes for text in axis.texts)
    with pytest.raises(ParameterError):
        evaluation_plots.plot_gradcam_gallery(overlays, ["maybe"] * 3, ["a", "b", "c"])


def test_examples_by_outcome_picks_the_most_confident_of_each() -> None:
    table = pd.DataFrame({"path": list("abcdefg"), "label": [1, 1, 1, 0, 0, 0, 1],
                          "probability": [0.9, 0.6, 0.2, 0.8, 0.3, 0.05, 0.99]})
    examples = error_analysis.examples_by_outcome(table, threshold=0.5, per_outcome=2)
    assert examples["outcome"].tolist() == ["true positive", "true positive", "false positive",
                                            "false negative", "true negative", "true negative"]
    assert examples["path"].tolist() == ["g", "a", "d", "c", "f", "e"]
