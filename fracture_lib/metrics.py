"""Evaluation metrics at image and study level, with bootstrap confidence intervals.

The MURA paper scores a *study* (all views of one body part of one patient at one visit): its
probability of being abnormal is the mean of its images' probabilities (``aggregation="mean"``;
``"max"`` is offered as an option). Every metric is reported at both levels:

- ``accuracy``, ``sensitivity`` (recall of abnormal), ``specificity``, ``precision``, ``f1``,
  ``kappa`` (Cohen's kappa, the MURA paper's headline) at the decision threshold;
- ``auroc``, ``auprc`` (average precision), ``brier`` (Brier score) and ``ece`` (expected
  calibration error: equal-width bins of the predicted probability of abnormal, the mean of
  |observed fraction abnormal - mean predicted probability| weighted by the bin's share of items)
  from the probabilities alone.

The decision threshold is chosen on the validation split (``0.5`` with ``"fixed"``; the
study-level Youden's J optimum with ``"youden"``) and applied unchanged to the test split, at both
levels. 95% confidence intervals come from a percentile bootstrap that resamples *patients*
(a cluster bootstrap: a patient with two studies brings both, so correlated studies are not
counted as independent; studies are the unit when no ``patient`` column is given).

Point estimates come from scikit-learn. The bootstrap needs every metric on ``n_boot`` resamples;
calling scikit-learn 10 x 1000 times takes tens of seconds, so the resamples are scored together
by ``weighted_metric_matrix`` (each resample is a vector of row multiplicities, and the same
formulas scikit-learn applies with ``sample_weight``); the tests check it against scikit-learn.

How a run's evaluation is assembled from these and written to disk is in ``evaluation``;
summaries across parts in ``summary``; the body-part classifier and the two-stage pipeline
in ``routing``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from fracture_lib import config
from fracture_lib.errors import ParameterError

# The metrics of ``binary_metrics``, in the order tables show them.
METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "kappa",
    "auroc",
    "auprc",
    "brier",
    "ece",
)
COUNT_NAMES: tuple[str, ...] = ("tp", "fp", "tn", "fn")
# The study-level test metrics written to evaluation.json and shown in summaries.
HEADLINE_METRICS: tuple[str, ...] = ("kappa", "auroc", "sensitivity", "specificity", "accuracy")
AGGREGATIONS: tuple[str, ...] = ("mean", "max")
THRESHOLD_METHODS: tuple[str, ...] = ("fixed", "youden")
LEVELS: tuple[str, ...] = ("image", "study")
TABLE_COLUMNS: list[str] = ["split", "level", "metric", "value", "ci_low", "ci_high"]
# The threshold of the "fixed" method, and of a run that has not been evaluated yet.
DEFAULT_THRESHOLD = 0.5
DEFAULT_N_BINS = 10


# --------------------------------------------------------------------------------------------
# Inputs and aggregation
# --------------------------------------------------------------------------------------------


def _as_arrays(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return labels as int 0/1 and probabilities as float arrays, after checking them."""
    label_array = np.asarray(labels).astype(float).ravel()
    probability_array = np.asarray(probabilities, dtype=float).ravel()
    if label_array.shape != probability_array.shape:
        raise ParameterError(
            f"labels ({label_array.size}) and probabilities ({probability_array.size}) differ in length"
        )
    if label_array.size == 0:
        raise ParameterError("no predictions to evaluate: the split is empty")
    if not np.isin(label_array, (0.0, 1.0)).all():
        raise ParameterError("labels must be 0 (normal) or 1 (abnormal)")
    if not np.isfinite(probability_array).all() or probability_array.min() < 0 or probability_array.max() > 1:
        raise ParameterError("probabilities must be finite numbers between 0 and 1")
    return label_array.astype(int), probability_array


def check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise ``ParameterError`` naming the missing columns of ``frame``."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ParameterError(f"{what} lacks column(s) {', '.join(missing)}: it needs {', '.join(columns)}")


def aggregate_studies(predictions: pd.DataFrame, method: str = "mean") -> pd.DataFrame:
    """Turn image rows into one row per study.

    ``predictions`` has one row per image with ``study``, ``label`` and ``probability`` (and
    usually ``patient`` and ``body_part``). The study probability is the mean (the MURA paper's
    rule) or the max of its images' probabilities. Returns the columns ``study``, ``patient``,
    ``body_part`` (when present), ``label``, ``probability``, ``n_images``, sorted by study.
    """
    if method not in AGGREGATIONS:
        raise ParameterError(f"unknown aggregation {method!r}: choose {' or '.join(AGGREGATIONS)}")
    check_columns(predictions, ("study", "label", "probability"), "the prediction table")
    grouped = predictions.groupby("study", sort=True)
    # MURA labels studies, not images: every image of a study must carry the study's label.
    labels_per_study = grouped["label"].nunique()
    mixed = labels_per_study[labels_per_study > 1]
    if len(mixed):
        raise ParameterError(
            f"study {mixed.index[0]} has images with different labels ({len(mixed)} such studies): "
            "MURA labels whole studies, so check the index"
        )
    studies = pd.DataFrame({
        "study": labels_per_study.index,
        "label": grouped["label"].first().to_numpy().astype(int),
        "probability": grouped["probability"].agg(method).to_numpy().astype(float),
        "n_images": grouped.size().to_numpy(),
    })
    for column in ("patient", "body_part"):
        if column in predictions.columns:
            studies.insert(1, column, grouped[column].first().to_numpy())
    ordered = [column for column in ("study", "patient", "body_part", "label", "probability", "n_images")
               if column in studies.columns]
    return studies[ordered].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Point estimates (scikit-learn)
# --------------------------------------------------------------------------------------------


def calibration_bins(probabilities: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> np.ndarray:
    """Index (0 .. n_bins-1) of each probability's equal-width bin on [0, 1].

    Bins are ``(edge, next edge]`` (the first also holds 0), exactly as scikit-learn's
    ``calibration_curve`` bins them, so the ECE matches the reliability diagram.
    """
    if n_bins < 1:
        raise ParameterError(f"n_bins={n_bins} must be at least 1")
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner_edges, np.asarray(probabilities, dtype=float))


def expected_calibration_error(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                               n_bins: int = DEFAULT_N_BINS) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins.

    In each bin, the gap is |fraction of abnormal items - mean predicted probability|; the
    ECE is the mean gap weighted by the share of items in each bin (empty bins weigh nothing).
    """
    label_array, probability_array = _as_arrays(labels, probabilities)
    bins = calibration_bins(probability_array, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    observed = np.bincount(bins, weights=label_array, minlength=n_bins)
    predicted = np.bincount(bins, weights=probability_array, minlength=n_bins)
    # Sum over bins of count * |observed/count - predicted/count|, divided by the number of items.
    return float(np.abs(observed - predicted).sum() / counts.sum())


def _safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or NaN when the denominator is zero."""
    return float(numerator / denominator) if denominator else math.nan


def binary_metrics(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                   threshold: float = 0.5, n_bins: int = DEFAULT_N_BINS) -> dict[str, float]:
    """Every metric of ``METRIC_NAMES`` plus the counts ``tp``, ``fp``, ``tn``, ``fn``.

    An item is called abnormal when its probability is ``>= threshold``. Metrics that are
    undefined on the data (AUROC and AUPRC with one class, sensitivity without positives, ...)
    are NaN rather than an error.
    """
    label_array, probability_array = _as_arrays(labels, probabilities)
    predicted = (probability_array >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion_matrix(label_array, predicted, labels=[0, 1])
    both_classes = len(np.unique(label_array)) == 2
    # Kappa is undefined only when truth and decisions are one and the same single class.
    kappa_defined = both_classes or len(np.unique(predicted)) == 2 or label_array[0] != predicted[0]
    result = {
        "accuracy": float(accuracy_score(label_array, predicted)),
        "sensitivity": float(recall_score(label_array, predicted, zero_division=np.nan)) if tp + fn else math.nan,
        "specificity": _safe_ratio(tn, tn + fp),
        "precision": float(precision_score(label_array, predicted, zero_division=np.nan)) if tp + fp else math.nan,
        "f1": float(f1_score(label_array, predicted, zero_division=np.nan)) if 2 * tp + fp + fn else math.nan,
        "kappa": float(cohen_kappa_score(label_array, predicted)) if kappa_defined else math.nan,
        "auroc": float(roc_auc_score(label_array, probability_array)) if both_classes else math.nan,
        "auprc": float(average_precision_score(label_array, probability_array)) if tp + fn else math.nan,
        "brier": float(brier_score_loss(label_array, probability_array, pos_label=1)),
        "ece": expected_calibration_error(label_array, probability_array, n_bins),
    }
    result.update({"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)})
    return result


def choose_threshold(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                     method: str = "fixed", fixed: float = DEFAULT_THRESHOLD) -> float:
    """Pick the decision threshold on the validation split.

    ``"fixed"`` returns ``fixed``; ``"youden"`` returns the probability that maximises Youden's
    J = sensitivity + specificity - 1 on the ROC curve (the first, i.e. highest, on ties).
    """
    if method not in THRESHOLD_METHODS:
        raise ParameterError(f"unknown threshold method {method!r}: choose {' or '.join(THRESHOLD_METHODS)}")
    if not 0.0 <= fixed <= 1.0:
        raise ParameterError(f"fixed threshold {fixed} must lie between 0 and 1")
    if method == "fixed":
        return float(fixed)
    label_array, probability_array = _as_arrays(labels, probabilities)
    if len(np.unique(label_array)) < 2:
        raise ParameterError(
            "Youden's threshold needs normal and abnormal studies in the validation split: "
            "use threshold_method='fixed' or a larger validation split"
        )
    false_positive_rate, true_positive_rate, thresholds = roc_curve(label_array, probability_array)
    # The first ROC point is (0, 0) at an infinite threshold: never choose it.
    youden = (true_positive_rate - false_positive_rate)[1:]
    return float(min(thresholds[1:][int(np.argmax(youden))], 1.0))


# --------------------------------------------------------------------------------------------
# Bootstrap (vectorised over resamples)
# --------------------------------------------------------------------------------------------


def divide_or_nan(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio with NaN where the denominator is zero."""
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def _ranking_metrics(weights: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and average precision of every row of ``weights`` (ties handled as sklearn)."""
    # Group the items by distinct probability, highest first, as scikit-learn's curves do.
    order = np.argsort(-probabilities, kind="mergesort")
    sorted_probabilities = probabilities[order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_probabilities) != 0])
    positive_weights = np.add.reduceat(weights[:, order] * labels[order], starts, axis=1)
    negative_weights = np.add.reduceat(weights[:, order] * (1 - labels[order]), starts, axis=1)
    total_positive = positive_weights.sum(axis=1)
    total_negative = negative_weights.sum(axis=1)
    # AUROC: each positive beats the negatives ranked below it and ties half of its own group.
    negatives_below = total_negative[:, None] - np.cumsum(negative_weights, axis=1)
    pairs = (positive_weights * (negatives_below + 0.5 * negative_weights)).sum(axis=1)
    auroc = divide_or_nan(pairs, total_positive * total_negative)
    # Average precision: the precision at each threshold, weighted by the recall it adds.
    true_positives = np.cumsum(positive_weights, axis=1)
    called_positive = true_positives + np.cumsum(negative_weights, axis=1)
    precision = np.nan_to_num(divide_or_nan(true_positives, called_positive))
    auprc = divide_or_nan((positive_weights * precision).sum(axis=1), total_positive)
    return auroc, auprc


def weighted_metric_matrix(weights: np.ndarray, labels: Sequence[int] | np.ndarray,
                           probabilities: Sequence[float] | np.ndarray, threshold: float,
                           n_bins: int = DEFAULT_N_BINS) -> dict[str, np.ndarray]:
    """Every metric of ``METRIC_NAMES`` for each row of ``weights`` (resample x item multiplicities).

    Row ``b`` gives the same values as ``binary_metrics`` on the items repeated ``weights[b]``
    times; a single row of ones gives the point estimates. Returns ``{metric: array (B,)}``.
    """
    label_array, probability_array = _as_arrays(labels, probabilities)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    labels_float = label_array.astype(float)
    predicted = (probability_array >= threshold).astype(float)
    tp = weights @ (labels_float * predicted)
    fp = weights @ ((1 - labels_float) * predicted)
    fn = weights @ (labels_float * (1 - predicted))
    tn = weights @ ((1 - labels_float) * (1 - predicted))
    total = tp + fp + fn + tn
    observed_agreement = divide_or_nan(tp + tn, total)
    chance_agreement = divide_or_nan((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn), total**2)
    bins = calibration_bins(probability_array, n_bins)
    bin_indicator = np.eye(n_bins)[bins]
    calibration_gaps = weights @ (bin_indicator * (labels_float - probability_array)[:, None])
    auroc, auprc = _ranking_metrics(weights, labels_float, probability_array)
    return {
        "accuracy": observed_agreement,
        "sensitivity": divide_or_nan(tp, tp + fn),
        "specificity": divide_or_nan(tn, tn + fp),
        "precision": divide_or_nan(tp, tp + fp),
        "f1": divide_or_nan(2 * tp, 2 * tp + fp + fn),
        "kappa": divide_or_nan(observed_agreement - chance_agreement, 1 - chance_agreement),
        "auroc": auroc,
        "auprc": auprc,
        "brier": divide_or_nan(weights @ (probability_array - labels_float) ** 2, total),
        "ece": divide_or_nan(np.abs(calibration_gaps).sum(axis=1), total),
    }


def bootstrap_weights(clusters: Sequence[Any] | np.ndarray, n_boot: int = 1000, seed: int = config.DEFAULT_SEED) -> np.ndarray:
    """Row multiplicities (n_boot, n_items) of a cluster bootstrap.

    Each resample draws as many clusters as there are, with replacement; an item counts as often
    as its cluster was drawn. With one item per cluster this is the ordinary bootstrap.
    """
    if n_boot < 1:
        raise ParameterError(f"n_boot={n_boot} must be at least 1")
    cluster_codes, cluster_names = pd.factorize(pd.Series(np.asarray(clusters, dtype=object)), sort=True)
    n_clusters = len(cluster_names)
    random = np.random.default_rng(seed)
    cluster_counts = random.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)
    return cluster_counts[:, cluster_codes]


def bootstrap_intervals(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                        clusters: Sequence[Any] | np.ndarray | None = None, threshold: float = 0.5,
                        n_boot: int = 1000, seed: int = config.DEFAULT_SEED, confidence: float = 0.95,
                        n_bins: int = DEFAULT_N_BINS) -> pd.DataFrame:
    """Point estimates and percentile bootstrap intervals of every metric.

    ``clusters`` names the resampling unit of each item (the patient; ``None`` resamples the
    items themselves). The threshold is held fixed, as it was chosen on another split. Returns a
    frame indexed by metric with ``value``, ``ci_low``, ``ci_high`` (NaN when undefined).
    """
    if not 0 < confidence < 1:
        raise ParameterError(f"confidence={confidence} must lie strictly between 0 and 1")
    label_array, probability_array = _as_arrays(labels, probabilities)
    if clusters is None:
        clusters = np.arange(label_array.size)
    if len(clusters) != label_array.size:
        raise ParameterError(f"clusters ({len(clusters)}) and labels ({label_array.size}) differ in length")
    point = binary_metrics(label_array, probability_array, threshold, n_bins)
    replicates = weighted_metric_matrix(bootstrap_weights(clusters, n_boot, seed), label_array,
                                        probability_array, threshold, n_bins)
    tail = (1 - confidence) / 2 * 100
    rows = []
    for metric in METRIC_NAMES:
        values = replicates[metric]
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [tail, 100 - tail]) if values.size else (math.nan, math.nan)
        rows.append({"metric": metric, "value": point[metric], "ci_low": float(low), "ci_high": float(high)})
    return pd.DataFrame(rows).set_index("metric")


def format_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """``0.812 [0.751, 0.866]``; ``n/a`` for an undefined value."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if low is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
