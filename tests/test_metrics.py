"""Metrics against hand-computed values, study aggregation, bootstrap, thresholds, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, cohen_kappa_score, roc_auc_score

from fracture_lib import metrics
from fracture_lib.errors import ParameterError

# Six items worked out by hand: three abnormal, three normal, threshold 0.5.
# Decisions: 1 1 0 | 1 0 0  ->  tp=2, fn=1, fp=1, tn=2.
LABELS = np.array([1, 1, 1, 0, 0, 0])
PROBABILITIES = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1])


def test_binary_metrics_match_hand_computed_values() -> None:
    result = metrics.binary_metrics(LABELS, PROBABILITIES, threshold=0.5, n_bins=2)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (2, 1, 2, 1)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["sensitivity"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    # Observed agreement 4/6, chance agreement 0.5*0.5 + 0.5*0.5 = 0.5: kappa = (2/3 - 1/2) / (1/2).
    assert result["kappa"] == pytest.approx(1 / 3)
    # Squared errors 0.01 + 0.16 + 0.36 + 0.49 + 0.04 + 0.01 = 1.07 over six items.
    assert result["brier"] == pytest.approx(1.07 / 6)
    # Positives beat 3, 2 and 2 of the 3 negatives.
    assert result["auroc"] == pytest.approx(7 / 9)
    # Precision at each positive, by descending probability: 1/1, 2/3, 3/4.
    assert result["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # Bin [0, 0.5): 1/3 abnormal vs mean 0.7/3 -> gap 0.1; bin [0.5, 1]: 2/3 vs 2.2/3 -> gap 1/15.
    assert result["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * (1 / 15))


def test_expected_calibration_error_bins() -> None:
    # Ten bins put each item alone: the ECE is the mean absolute error.
    assert metrics.expected_calibration_error(LABELS, PROBABILITIES, n_bins=10) == pytest.approx(2.1 / 6)
    # One bin compares the overall rate (0.5) with the mean probability (2.9 / 6).
    assert metrics.expected_calibration_error(LABELS, PROBABILITIES, n_bins=1) == pytest.approx(abs(0.5 - 2.9 / 6))
    # A probability of exactly 1 falls in the last bin, not past it.
    assert metrics.expected_calibration_error([1, 0], [1.0, 0.0], n_bins=5) == 0.0
    # The bins are scikit-learn's calibration_curve bins: the ECE is its curve's weighted gap.
    from sklearn.calibration import calibration_curve

    labels, probabilities = random_predictions(200, seed=4)
    probabilities[:10] = [0.0, 0.1, 0.2, 0.25, 0.5, 0.5, 0.7, 0.75, 0.9, 1.0]  # on and off bin edges
    observed, predicted = calibration_curve(labels, probabilities, n_bins=4)
    counts = np.bincount(metrics.calibration_bins(probabilities, 4), minlength=4)
    expected = np.sum(counts[counts > 0] * np.abs(observed - predicted)) / len(labels)
    assert metrics.expected_calibration_error(labels, probabilities, n_bins=4) == pytest.approx(expected)


def test_single_class_gives_nan_not_a_crash() -> None:
    result = metrics.binary_metrics([1, 1, 1], [0.9, 0.4, 0.8], threshold=0.5)
    assert math.isnan(result["auroc"]) and math.isnan(result["specificity"])
    assert result["sensitivity"] == pytest.approx(2 / 3) and result["accuracy"] == pytest.approx(2 / 3)
    all_right = metrics.binary_metrics([0, 0], [0.1, 0.2], threshold=0.5)
    assert math.isnan(all_right["kappa"]) and math.isnan(all_right["auprc"]) and all_right["accuracy"] == 1.0


@pytest.mark.parametrize("labels, probabilities", [
    ([1, 0], [0.5]),
    ([2, 0], [0.5, 0.5]),
    ([1, 0], [1.5, 0.5]),
    ([], []),
])
def test_bad_inputs_raise_parameter_error(labels, probabilities) -> None:
    with pytest.raises(ParameterError):
        metrics.binary_metrics(labels, probabilities)


def image_table() -> pd.DataFrame:
    """Five images of three studies (two patients)."""
    return pd.DataFrame({
        "path": [f"image{number}.png" for number in range(5)],
        "study": ["s1", "s1", "s2", "s3", "s3"],
        "patient": ["p1", "p1", "p1", "p2", "p2"],
        "body_part": "elbow",
        "label": [1, 1, 0, 0, 0],
        "probability": [0.2, 0.8, 0.3, 0.6, 0.1],
    })


def test_aggregate_studies_mean_and_max() -> None:
    mean = metrics.aggregate_studies(image_table(), "mean")
    assert list(mean.columns) == ["study", "patient", "body_part", "label", "probability", "n_images"]
    assert mean["study"].tolist() == ["s1", "s2", "s3"]
    assert mean["probability"].tolist() == pytest.approx([0.5, 0.3, 0.35])
    assert mean["n_images"].tolist() == [2, 1, 2] and mean["label"].tolist() == [1, 0, 0]
    assert mean["patient"].tolist() == ["p1", "p1", "p2"]
    maximum = metrics.aggregate_studies(image_table(), "max")
    assert maximum["probability"].tolist() == pytest.approx([0.8, 0.3, 0.6])


def test_aggregate_studies_rejects_mixed_labels_and_unknown_methods() -> None:
    table = image_table()
    table.loc[1, "label"] = 0
    with pytest.raises(ParameterError, match="s1"):
        metrics.aggregate_studies(table)
    with pytest.raises(ParameterError, match="median"):
        metrics.aggregate_studies(image_table(), "median")


def test_fixed_threshold() -> None:
    assert metrics.choose_threshold(LABELS, PROBABILITIES) == 0.5
    assert metrics.choose_threshold(LABELS, PROBABILITIES, "fixed", fixed=0.3) == 0.3


def test_youden_threshold_on_a_constructed_example() -> None:
    # Normals 0.1, 0.3, 0.5; abnormals 0.2, 0.7, 0.9. J by threshold: 0.9 -> 1/3, 0.7 -> 2/3,
    # 0.5 -> 1/3, 0.3 -> 0, 0.2 -> 1/3: the optimum is 0.7.
    labels = [0, 0, 0, 1, 1, 1]
    probabilities = [0.1, 0.3, 0.5, 0.2, 0.7, 0.9]
    threshold = metrics.choose_threshold(labels, probabilities, "youden")
    assert threshold == pytest.approx(0.7)
    result = metrics.binary_metrics(labels, probabilities, threshold)
    assert (result["sensitivity"], result["specificity"]) == (pytest.approx(2 / 3), 1.0)
    with pytest.raises(ParameterError, match="fixed"):
        metrics.choose_threshold([1, 1], [0.2, 0.9], "youden")
    with pytest.raises(ParameterError):
        metrics.choose_threshold(labels, probabilities, "otsu")


def random_predictions(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative, tied-in-places probabilities."""
    random = np.random.default_rng(seed)
    labels = random.integers(0, 2, size)
    probabilities = np.clip(0.35 + 0.3 * labels + random.normal(0, 0.2, size), 0, 1).round(2)
    return labels, probabilities


def test_weighted_metric_matrix_matches_scikit_learn_on_repeated_rows() -> None:
    labels, probabilities = random_predictions(60, seed=1)
    weights = np.random.default_rng(2).integers(0, 4, size=(3, labels.size))
    vectorised = metrics.weighted_metric_matrix(weights, labels, probabilities, threshold=0.45, n_bins=10)
    for row, multiplicities in enumerate(weights):
        repeated_labels = np.repeat(labels, multiplicities)
        repeated_probabilities = np.repeat(probabilities, multiplicities)
        expected = metrics.binary_metrics(repeated_labels, repeated_probabilities, 0.45, n_bins=10)
        for name in metrics.METRIC_NAMES:
            assert vectorised[name][row] == pytest.approx(expected[name], abs=1e-12), name
        # And scikit-learn's own weighted versions agree with the repeated rows.
        assert vectorised["auroc"][row] == pytest.approx(roc_auc_score(labels, probabilities, sample_weight=multiplicities))
        assert vectorised["auprc"][row] == pytest.approx(
            average_precision_score(labels, probabilities, sample_weight=multiplicities))
        assert vectorised["brier"][row] == pytest.approx(
            brier_score_loss(labels, probabilities, sample_weight=multiplicities))
        assert vectorised["kappa"][row] == pytest.approx(
            cohen_kappa_score(labels, (probabilities >= 0.45).astype(int), sample_weight=multiplicities))


def test_cluster_bootstrap_moves_a_patients_studies_together() -> None:
    clusters = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
    weights = metrics.bootstrap_weights(clusters, n_boot=200, seed=0)
    assert weights.shape == (200, 6)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
    # Each resample draws three patients.
    patient_draws = weights[:, [0, 2, 3]]
    assert (patient_draws.sum(axis=1) == 3).all()
    assert not (weights[:, 0] == weights[:, 2]).all()
    assert np.array_equal(weights, metrics.bootstrap_weights(clusters, n_boot=200, seed=0))


def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_more_data() -> None:
    labels, probabilities = random_predictions(80, seed=3)
    small = metrics.bootstrap_intervals(labels, probabilities, n_boot=500, seed=0)
    assert list(small.index) == list(metrics.METRIC_NAMES)
    for name, row in small.iterrows():
        assert row["ci_low"] <= row["value"] <= row["ci_high"], name
    # The same data four times over: intervals about half as wide.
    large = metrics.bootstrap_intervals(np.tile(labels, 4), np.tile(probabilities, 4), n_boot=500, seed=0)
    for name in ("accuracy", "sensitivity", "kappa", "auroc", "brier"):
        small_width = small.loc[name, "ci_high"] - small.loc[name, "ci_low"]
        large_width = large.loc[name, "ci_high"] - large.loc[name, "ci_low"]
        assert large_width < 0.75 * small_width, name
        assert large.loc[name, "value"] == pytest.approx(small.loc[name, "value"])
    # Seeded: the same seed gives the same intervals.
    again = metrics.bootstrap_intervals(labels, probabilities, n_boot=500, seed=0)
    pd.testing.assert_frame_equal(small, again)


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
    result = metrics.evaluate(val, test, threshold_method="youden", n_boot=200, seed=0)
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
    result = metrics.evaluate(split_predictions(0), split_predictions(1), n_boot=50, seed=0)
    run_dir = tmp_path / "models" / "elbow" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "evaluation.json").write_text("previous")
    evaluation_path, metrics_path = metrics.save_evaluation(
        result, run_dir, tmp_path / "metrics" / "elbow.json",
        extra={"pointing_game": {"hit_rate": 0.5, "hits": np.int64(3)}, "unplayed": {"hit_rate": math.nan}})
    evaluation = json.loads(evaluation_path.read_text())
    assert evaluation["threshold"] == 0.5 and evaluation["threshold_method"] == "fixed"
    assert evaluation["aggregation"] == "mean" and evaluation["body_part"] == "elbow"
    assert evaluation["study"]["kappa"] == pytest.approx(result.metric("kappa"))
    assert set(evaluation["study"]) == set(metrics.HEADLINE_METRICS)
    document = json.loads(metrics_path.read_text())
    assert document["headline"]["auroc"]["value"] == pytest.approx(result.metric("auroc"))
    assert document["metrics"]["val"]["image"]["ece"]["ci_low"] is not None
    assert document["extra"]["pointing_game"] == {"hit_rate": 0.5, "hits": 3}
    assert document["extra"]["unplayed"]["hit_rate"] is None
    assert not list(tmp_path.rglob("*.tmp"))
    summary = metrics.summary_table(["elbow", "hand"], tmp_path / "metrics")
    assert summary.loc[0, "status"] == "ok" and summary.loc[0, "kappa"] == pytest.approx(result.metric("kappa"))
    assert summary.loc[1, "status"].startswith("no metrics") and math.isnan(summary.loc[1, "kappa"])


def test_most_confident_mistakes() -> None:
    table = image_table()
    mistakes = metrics.most_confident_mistakes(table, threshold=0.5)
    # Wrong: image0 (abnormal at 0.2, 0.3 away) and image3 (normal at 0.6, 0.1 away).
    assert mistakes["path"].tolist() == ["image0.png", "image3.png"]
    assert mistakes["error"].tolist() == ["false negative", "false positive"]


def test_classifier_metrics_and_study_routing() -> None:
    classes = ["elbow", "hand", "shoulder"]
    predictions = pd.DataFrame({
        "study": ["a", "a", "b", "c"],
        "label": ["elbow", "elbow", "hand", "shoulder"],
        "prob_elbow": [0.6, 0.2, 0.1, 0.5],
        "prob_hand": [0.3, 0.7, 0.8, 0.1],
        "prob_shoulder": [0.1, 0.1, 0.1, 0.4],
    })
    studies = metrics.aggregate_body_part_studies(predictions, classes)
    # Study a: mean elbow 0.4, hand 0.5 -> routed to hand.
    assert studies["predicted"].tolist() == ["hand", "hand", "elbow"]
    assert studies.loc[0, "probability"] == pytest.approx(0.5)
    result = metrics.classifier_metrics(studies["label"], studies["predicted"], classes)
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["confusion"].loc["elbow", "hand"] == 1 and result["confusion"].loc["hand", "hand"] == 1
    assert result["recall"]["hand"] == 1.0 and result["recall"]["shoulder"] == 0.0


def test_two_stage_accuracy() -> None:
    studies = pd.DataFrame({
        "study": ["e1", "e2", "h1", "h2"],
        "body_part": ["elbow", "elbow", "hand", "hand"],
        "routed_part": ["elbow", "hand", "hand", "shoulder"],
        "label": [1, 0, 1, 0],
    })
    scores = pd.DataFrame({
        "study": ["e1", "e2", "e2", "h1", "h2"],
        "model_part": ["elbow", "elbow", "hand", "hand", "hand"],
        "probability": [0.9, 0.2, 0.8, 0.7, 0.1],
    })
    result = metrics.two_stage_accuracy(studies, scores, {"elbow": 0.5, "hand": 0.5})
    assert result["routing_accuracy"] == 0.5
    # True part: all four right. Two-stage: e2 misrouted to hand (0.8, wrong), h2 to a part without a model.
    assert result["true_part_accuracy"] == 1.0 and result["true_part_unscored"] == 0
    assert result["two_stage_accuracy"] == 0.5 and result["two_stage_unscored"] == 1
    assert result["true_part_kappa"] == 1.0
    assert result["per_study"]["two_stage_decision"].isna().tolist() == [False, False, False, True]


def test_evaluation_figures_are_titled_and_labelled() -> None:
    from fracture_lib.plots import evaluation as evaluation_plots

    result = metrics.evaluate(split_predictions(0), split_predictions(1), n_boot=20, seed=0)
    levels = result.predictions["test"]
    figures = [
        evaluation_plots.plot_roc_pr(levels, result.threshold),
        evaluation_plots.plot_confusion_matrices(levels, result.threshold),
        evaluation_plots.plot_reliability(levels),
        evaluation_plots.plot_probability_histograms(levels, result.threshold),
    ]
    summary = pd.DataFrame([{"body_part": "elbow", "status": "ok", "kappa": 0.6, "kappa_ci_low": 0.5,
                             "kappa_ci_high": 0.7, "auroc": 0.9, "auroc_ci_low": 0.85, "auroc_ci_high": 0.95}])
    figures.append(evaluation_plots.plot_summary_comparison(summary, metrics.MURA_PAPER_KAPPA, ("kappa", "auroc")))
    confusion = metrics.classifier_metrics(["elbow", "hand"], ["elbow", "elbow"], ["elbow", "hand"])["confusion"]
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
    examples = metrics.examples_by_outcome(table, threshold=0.5, per_outcome=2)
    assert examples["outcome"].tolist() == ["true positive", "true positive", "false positive",
                                            "false negative", "true negative", "true negative"]
    assert examples["path"].tolist() == ["g", "a", "d", "c", "f", "e"]


def test_two_stage_from_predictions() -> None:
    classes = ["elbow", "hand"]
    # Two elbow studies and one hand study; the router sends elbow study e2 to the hand model.
    router = pd.DataFrame({"study": ["e1", "e2", "h1"], "label": ["elbow", "elbow", "hand"],
                           "prob_elbow": [0.9, 0.3, 0.1], "prob_hand": [0.1, 0.7, 0.9]})
    images = pd.DataFrame({"study": ["e1", "e1", "e2", "h1"], "label": [1, 1, 0, 1]})
    fracture = {"elbow": images.assign(probability=[0.7, 0.5, 0.1, 0.2]),
                "hand": images.assign(probability=[0.1, 0.1, 0.6, 0.9])}
    result = metrics.two_stage_from_predictions(router, classes, fracture, {"elbow": 0.5, "hand": 0.5})
    # True part: e1 (0.6, right), e2 (0.1, right), h1 (0.9, right). Two-stage: e2 gets 0.6, wrong.
    assert result["n"] == 3 and result["routing_accuracy"] == pytest.approx(2 / 3)
    assert result["true_part_accuracy"] == 1.0 and result["two_stage_accuracy"] == pytest.approx(2 / 3)
    only_elbow = metrics.two_stage_from_predictions(router, classes, fracture, {"elbow": 0.5, "hand": 0.5},
                                                    parts=["elbow"])
    assert only_elbow["n"] == 2
