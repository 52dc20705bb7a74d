"""Point metrics against hand-computed values, study aggregation, thresholds and the bootstrap."""

from __future__ import annotations

import math

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
