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

Files written by ``save_evaluation`` (read by ``predict``, ``models``, ``reports`` and notebook 05)::

    models/<part>/<run>/evaluation.json
    {
      "body_part": "elbow", "run_name": "default", "run_dir": str,
      "threshold": 0.5,                 # decide "abnormal" when probability >= threshold
      "threshold_method": "fixed" | "youden",   # chosen on the validation split
      "aggregation": "mean" | "max",    # image -> study probability
      "split": "test",                  # the split the headline metrics were measured on
      "study": {"kappa": float, "auroc": float, "sensitivity": float,
                "specificity": float, "accuracy": float},   # test split, study level
      "metrics_file": str,              # the full report below
      "created": ISO 8601 time
    }

    reports/metrics/<part>.json  (config.METRICS_DIR)
    {
      "body_part", "run_name", "run_dir", "threshold", "threshold_method", "aggregation",
      "n_bootstrap", "seed", "confidence": 0.95, "n_bins": 10, "created",
      "headline": {"split": "test", "level": "study", "threshold": float,
                   "kappa": {"value", "ci_low", "ci_high"}, "auroc": {...},
                   "sensitivity": {...}, "specificity": {...}, "accuracy": {...}},
      "metrics": {"<split>": {"<level>": {"<metric>": {"value", "ci_low", "ci_high"}}}},
      "counts": {"<split>": {"<level>": {"n", "n_positive", "tp", "fp", "tn", "fn"}}},
      "extra": {...}                    # anything the caller adds (e.g. the pointing game)
    }

``split`` is ``val`` or ``test``, ``level`` is ``image`` or ``study``, ``metric`` one of
``METRIC_NAMES``. Values that are undefined (for example AUROC on a single class) are ``null``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

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
from fracture_lib.files import write_text_atomically

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
# Decision outcomes, in the order galleries show them: right calls first, then the mistakes.
OUTCOMES: tuple[str, ...] = ("true positive", "false positive", "false negative", "true negative")
TABLE_COLUMNS: list[str] = ["split", "level", "metric", "value", "ci_low", "ci_high"]
EVALUATION_FILENAME = "evaluation.json"
# The MURA paper's DenseNet-169 study-level Cohen's kappa (Rajpurkar et al. 2017, Table 2),
# measured on MURA's hidden test set; ours are measured on the public valid set.
MURA_PAPER_KAPPA: dict[str, float] = {"elbow": 0.710, "hand": 0.851, "shoulder": 0.729}
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


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
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
    _check_columns(predictions, ("study", "label", "probability"), "the prediction table")
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
                     method: str = "fixed", fixed: float = 0.5) -> float:
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


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
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
    auroc = _divide(pairs, total_positive * total_negative)
    # Average precision: the precision at each threshold, weighted by the recall it adds.
    true_positives = np.cumsum(positive_weights, axis=1)
    called_positive = true_positives + np.cumsum(negative_weights, axis=1)
    precision = np.nan_to_num(_divide(true_positives, called_positive))
    auprc = _divide((positive_weights * precision).sum(axis=1), total_positive)
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
    observed_agreement = _divide(tp + tn, total)
    chance_agreement = _divide((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn), total**2)
    bins = calibration_bins(probability_array, n_bins)
    bin_indicator = np.eye(n_bins)[bins]
    calibration_gaps = weights @ (bin_indicator * (labels_float - probability_array)[:, None])
    auroc, auprc = _ranking_metrics(weights, labels_float, probability_array)
    return {
        "accuracy": observed_agreement,
        "sensitivity": _divide(tp, tp + fn),
        "specificity": _divide(tn, tn + fp),
        "precision": _divide(tp, tp + fp),
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
        "kappa": _divide(observed_agreement - chance_agreement, 1 - chance_agreement),
        "auroc": auroc,
        "auprc": auprc,
        "brier": _divide(weights @ (probability_array - labels_float) ** 2, total),
        "ece": _divide(np.abs(calibration_gaps).sum(axis=1), total),
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


# --------------------------------------------------------------------------------------------
# Evaluation of one run
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Everything ``evaluate`` measured: the tidy table, the threshold and the scored items.

    ``predictions[split][level]`` are the val/test image and study tables with ``predicted``
    (0/1 at the threshold) added; ``counts[split][level]`` the confusion counts.
    """

    table: pd.DataFrame
    threshold: float
    threshold_method: str
    aggregation: str
    n_boot: int
    seed: int
    confidence: float
    n_bins: int
    predictions: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def metric(self, name: str, level: str = "study", split: str = "test") -> float:
        """The point estimate of one metric."""
        rows = self.table[(self.table["metric"] == name) & (self.table["level"] == level)
                          & (self.table["split"] == split)]
        if rows.empty:
            raise ParameterError(f"no metric {name!r} at {level} level on the {split} split")
        return float(rows["value"].iloc[0])

    def wide(self, split: str = "test") -> pd.DataFrame:
        """One row per metric, ``value [ci_low, ci_high]`` columns per level: the readable table."""
        rows = self.table[self.table["split"] == split]
        text = rows.apply(lambda row: format_interval(row["value"], row["ci_low"], row["ci_high"]), axis=1)
        wide = rows.assign(text=text).pivot(index="metric", columns="level", values="text")
        return wide.reindex(index=list(METRIC_NAMES), columns=[level for level in LEVELS if level in wide.columns])

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready summary (``metrics``, ``counts``, ``headline`` and the settings)."""
        metrics: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
        for row in self.table.itertuples(index=False):
            metrics.setdefault(row.split, {}).setdefault(row.level, {})[row.metric] = {
                "value": _json_number(row.value), "ci_low": _json_number(row.ci_low),
                "ci_high": _json_number(row.ci_high),
            }
        headline: dict[str, Any] = {"split": "test", "level": "study", "threshold": self.threshold}
        for name in HEADLINE_METRICS:
            headline[name] = metrics.get("test", {}).get("study", {}).get(name)
        return {
            "threshold": self.threshold,
            "threshold_method": self.threshold_method,
            "aggregation": self.aggregation,
            "n_bootstrap": self.n_boot,
            "seed": self.seed,
            "confidence": self.confidence,
            "n_bins": self.n_bins,
            "headline": headline,
            "metrics": metrics,
            "counts": self.counts,
        }


def format_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """``0.812 [0.751, 0.866]``; ``n/a`` for an undefined value."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if low is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _json_number(value: Any) -> float | None:
    """A float for JSON, ``None`` for NaN/inf."""
    return float(value) if value is not None and np.isfinite(value) else None


def _level_tables(predictions: pd.DataFrame, aggregation: str) -> dict[str, pd.DataFrame]:
    """The image table (as given) and the study table of one split."""
    _check_columns(predictions, ("study", "label", "probability"), "the prediction table")
    images = predictions.reset_index(drop=True).copy()
    images["label"] = images["label"].astype(int)
    return {"image": images, "study": aggregate_studies(images, aggregation)}


def _clusters(frame: pd.DataFrame) -> np.ndarray:
    """The bootstrap unit of each row: the patient when known, else the study."""
    return frame["patient" if "patient" in frame.columns else "study"].to_numpy()


def evaluate(val_predictions: pd.DataFrame, test_predictions: pd.DataFrame, aggregation: str = "mean",
             threshold_method: str = "fixed", n_boot: int = 1000, seed: int = config.DEFAULT_SEED,
             fixed_threshold: float = 0.5, confidence: float = 0.95, n_bins: int = DEFAULT_N_BINS) -> EvaluationResult:
    """Evaluate one fracture run: threshold on val (study level), every metric with CIs on both splits.

    Each prediction table has one row per image with ``study``, ``label``, ``probability`` (and
    ``patient``, the bootstrap unit). The threshold is chosen on the validation split's study
    probabilities and applied unchanged to images and studies of both splits.
    """
    if aggregation not in AGGREGATIONS:
        raise ParameterError(f"unknown aggregation {aggregation!r}: choose {' or '.join(AGGREGATIONS)}")
    splits = {"val": _level_tables(val_predictions, aggregation), "test": _level_tables(test_predictions, aggregation)}
    val_studies = splits["val"]["study"]
    threshold = choose_threshold(val_studies["label"], val_studies["probability"], threshold_method, fixed_threshold)
    rows, counts = [], {}
    for split, levels in splits.items():
        counts[split] = {}
        for level, frame in levels.items():
            intervals = bootstrap_intervals(frame["label"], frame["probability"], _clusters(frame), threshold,
                                            n_boot, seed, confidence, n_bins)
            rows.extend({"split": split, "level": level, "metric": metric, **values}
                        for metric, values in intervals.to_dict(orient="index").items())
            frame["predicted"] = (frame["probability"] >= threshold).astype(int)
            point = binary_metrics(frame["label"], frame["probability"], threshold, n_bins)
            counts[split][level] = {"n": int(len(frame)), "n_positive": int(frame["label"].sum()),
                                    **{name: point[name] for name in COUNT_NAMES}}
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return EvaluationResult(table, threshold, threshold_method, aggregation, n_boot, seed, confidence, n_bins,
                            splits, counts)


def outcomes(labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray) -> np.ndarray:
    """``"true positive"``, ``"false positive"``, ``"false negative"`` or ``"true negative"`` per item."""
    label_array = np.asarray(labels).astype(int)
    predicted_array = np.asarray(predicted).astype(int)
    correct = np.where(label_array == predicted_array, "true", "false")
    called = np.where(predicted_array == 1, "positive", "negative")
    return np.char.add(np.char.add(correct, " "), called).astype(object)


def examples_by_outcome(predictions: pd.DataFrame, threshold: float, per_outcome: int = 4) -> pd.DataFrame:
    """Up to ``per_outcome`` items of each outcome (``OUTCOMES`` order), the most confident first.

    Adds ``predicted``, ``outcome`` and ``confidence`` (distance of the probability from the
    threshold). Used to pick the Grad-CAM gallery.
    """
    _check_columns(predictions, ("label", "probability"), "the prediction table")
    table = predictions.copy()
    table["predicted"] = (table["probability"] >= threshold).astype(int)
    table["outcome"] = outcomes(table["label"], table["predicted"])
    table["confidence"] = (table["probability"] - threshold).abs()
    table["order"] = table["outcome"].map({name: number for number, name in enumerate(OUTCOMES)})
    table = table.sort_values(["order", "confidence"], ascending=[True, False], kind="mergesort")
    return table.groupby("order", sort=True).head(per_outcome).drop(columns="order").reset_index(drop=True)


def most_confident_mistakes(predictions: pd.DataFrame, threshold: float, count: int = 10) -> pd.DataFrame:
    """The ``count`` wrong decisions farthest from the threshold (false positives and negatives)."""
    _check_columns(predictions, ("label", "probability"), "the prediction table")
    predicted = (predictions["probability"] >= threshold).astype(int)
    mistakes = predictions[predicted != predictions["label"]].copy()
    mistakes["error"] = outcomes(mistakes["label"], 1 - mistakes["label"])
    mistakes["confidence"] = (mistakes["probability"] - threshold).abs()
    return mistakes.sort_values("confidence", ascending=False, kind="mergesort").head(count).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def json_ready(value: Any) -> Any:
    """``value`` with NumPy numbers made plain and NaN/inf made ``None``, recursively."""
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _json_number(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` as JSON to a temporary sibling of ``path`` and rename it into place."""
    write_text_atomically(path, json.dumps(json_ready(document), indent=2, allow_nan=False) + "\n")


def save_evaluation(result: EvaluationResult, run_dir: str | os.PathLike[str],
                    metrics_path: str | os.PathLike[str] | None = None,
                    extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<run_dir>/evaluation.json`` and the full metrics file (see the module docstring).

    ``metrics_path`` defaults to ``config.METRICS_DIR / <part>.json``, the part being the run's
    parent folder name. ``extra`` (JSON-ready) is stored under ``"extra"``. Returns both paths.
    """
    run_dir = Path(run_dir)
    body_part, run_name = run_dir.parent.name, run_dir.name
    metrics_path = Path(metrics_path) if metrics_path is not None else config.METRICS_DIR / f"{body_part}.json"
    created = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    identity = {"body_part": body_part, "run_name": run_name, "run_dir": str(run_dir)}
    document = {**identity, **result.to_dict(), "extra": dict(extra or {}), "created": created}
    headline = document["headline"]
    evaluation = {
        **identity,
        "threshold": result.threshold,
        "threshold_method": result.threshold_method,
        "aggregation": result.aggregation,
        "split": "test",
        "study": {name: (headline[name] or {}).get("value") for name in HEADLINE_METRICS},
        "metrics_file": str(metrics_path),
        "created": created,
    }
    _write_json_atomically(metrics_path, document)
    _write_json_atomically(run_dir / EVALUATION_FILENAME, evaluation)
    return run_dir / EVALUATION_FILENAME, metrics_path


def load_metrics(body_part: str, metrics_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The metrics file of one body part, or ``None`` when it has not been written."""
    path = Path(metrics_dir or config.METRICS_DIR) / f"{body_part}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def summary_table(body_parts: Sequence[str], metrics_dir: str | os.PathLike[str] | None = None,
                  metrics: Sequence[str] = ("kappa", "auroc", "sensitivity", "specificity")) -> pd.DataFrame:
    """One row per body part with the test split's study-level metrics and their CIs.

    Columns: ``body_part``, ``status`` (``ok`` or why it is missing), ``threshold``, then
    ``<metric>``, ``<metric>_ci_low``, ``<metric>_ci_high`` for each metric.
    """
    rows = []
    for part in body_parts:
        document = load_metrics(part, metrics_dir)
        row: dict[str, Any] = {"body_part": part}
        if document is None:
            row["status"] = "no metrics: run notebook 04 for this part"
        else:
            row["status"] = "ok"
            row["run_name"] = document.get("run_name")
            row["threshold"] = document.get("threshold")
            study = document.get("metrics", {}).get("test", {}).get("study", {})
            for name in metrics:
                values = study.get(name) or {}
                for suffix, key in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                    row[name + suffix] = values.get(key)
        rows.append(row)
    columns = ["body_part", "status", "run_name", "threshold"]
    columns += [name + suffix for name in metrics for suffix in ("", "_ci_low", "_ci_high")]
    return pd.DataFrame(rows).reindex(columns=columns).astype({name: float for name in columns[3:]})


def summary_display_table(summary: pd.DataFrame, paper_kappa: Mapping[str, float] | None = None,
                          metrics: Sequence[str] = ("kappa", "auroc", "sensitivity", "specificity")) -> pd.DataFrame:
    """``summary_table`` as readable text: ``value [low, high]`` per metric, the paper's kappa beside ours."""
    rows = []
    for record in summary.to_dict(orient="records"):
        row = {"body part": record["body_part"]}
        for name in metrics:
            row[f"{name} (95% CI)"] = format_interval(record.get(name), record.get(f"{name}_ci_low"),
                                                      record.get(f"{name}_ci_high"))
            if name == "kappa" and paper_kappa is not None:
                reference = paper_kappa.get(record["body_part"])
                row["MURA paper kappa"] = "n/a" if reference is None else f"{reference:.3f}"
        threshold = record.get("threshold")
        row["threshold"] = "n/a" if threshold is None or not np.isfinite(threshold) else f"{threshold:.3f}"
        row["status"] = record["status"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("body part")


def describe_predictions(predictions: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Images, studies, patients and abnormal studies of each named prediction table."""
    rows = []
    for name, frame in predictions.items():
        studies = frame.drop_duplicates("study")
        rows.append({"split": name, "images": len(frame), "studies": len(studies),
                     "patients": frame["patient"].nunique() if "patient" in frame.columns else None,
                     "abnormal studies": int(studies["label"].sum()),
                     "share abnormal (studies)": f"{studies['label'].mean():.1%}" if len(studies) else "n/a"})
    return pd.DataFrame(rows).set_index("split")


# --------------------------------------------------------------------------------------------
# The body-part classifier and the two-stage pipeline
# --------------------------------------------------------------------------------------------


def _probability_columns(predictions: pd.DataFrame, classes: Sequence[str]) -> list[str]:
    """The ``prob_<class>`` columns of a classifier prediction table, checked."""
    columns = [f"prob_{name}" for name in classes]
    _check_columns(predictions, columns, "the body-part prediction table")
    return columns


def aggregate_body_part_studies(predictions: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """One row per study of the body-part classifier: mean class probabilities, then the argmax.

    This is how ``predict`` routes a study folder. Returns ``study``, ``label`` (the true part),
    ``predicted``, ``probability`` (of the predicted part) and ``prob_<class>`` columns.
    """
    columns = _probability_columns(predictions, classes)
    _check_columns(predictions, ("study", "label"), "the body-part prediction table")
    grouped = predictions.groupby("study", sort=True)
    studies = grouped[columns].mean()
    best = studies.to_numpy().argmax(axis=1)
    result = pd.DataFrame({
        "study": studies.index,
        "label": grouped["label"].first().to_numpy(),
        "predicted": np.asarray(classes, dtype=object)[best],
        "probability": studies.to_numpy().max(axis=1),
    })
    return pd.concat([result, studies.reset_index(drop=True)], axis=1)


def classifier_metrics(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix (rows: true class)."""
    label_array = np.asarray(labels, dtype=object)
    predicted_array = np.asarray(predicted, dtype=object)
    if label_array.size == 0:
        raise ParameterError("no predictions to evaluate: the split is empty")
    matrix = confusion_matrix(label_array, predicted_array, labels=list(classes))
    confusion = pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))
    recall = pd.Series(_divide(np.diag(matrix), matrix.sum(axis=1)), index=list(classes), name="recall")
    present = recall.dropna()
    return {
        "n": int(label_array.size),
        "accuracy": float(accuracy_score(label_array, predicted_array)),
        "balanced_accuracy": float(present.mean()) if len(present) else math.nan,
        "recall": recall,
        "confusion": confusion,
    }


def two_stage_accuracy(studies: pd.DataFrame, scores: pd.DataFrame, thresholds: Mapping[str, float]) -> dict[str, Any]:
    """Study-level accuracy of router-then-fracture-model against using the true part's model.

    ``studies``: one row per study with ``study``, ``body_part`` (true part), ``routed_part``
    (the classifier's choice) and ``label``. ``scores``: ``study``, ``model_part``,
    ``probability`` (the study probability given by that part's fracture model); each study
    needs a score from the model of its true part and of its routed part. ``thresholds``:
    part -> threshold. A study routed to a part without a model counts as a mistake
    (``unscored``). Returns ``n``, ``routing_accuracy``, ``unscored``, ``accuracy`` and ``kappa``
    for both routes, and ``per_study`` (a frame with both decisions).
    """
    _check_columns(studies, ("study", "body_part", "routed_part", "label"), "the study table")
    _check_columns(scores, ("study", "model_part", "probability"), "the score table")
    lookup = scores.drop_duplicates(["study", "model_part"]).set_index(["study", "model_part"])["probability"]
    per_study = studies[["study", "body_part", "routed_part", "label"]].reset_index(drop=True).copy()
    for route, column in (("true_part", "body_part"), ("two_stage", "routed_part")):
        keys = pd.MultiIndex.from_arrays([per_study["study"], per_study[column]])
        probability = lookup.reindex(keys).to_numpy()
        threshold = per_study[column].map(lambda part: thresholds.get(part, np.nan)).to_numpy(dtype=float)
        scored = np.isfinite(probability) & np.isfinite(threshold)
        decision = np.where(scored, (np.nan_to_num(probability) >= np.nan_to_num(threshold)).astype(float), np.nan)
        per_study[f"{route}_probability"] = probability
        per_study[f"{route}_decision"] = decision
    result: dict[str, Any] = {
        "n": int(len(per_study)),
        "routing_accuracy": float((per_study["body_part"] == per_study["routed_part"]).mean()) if len(per_study) else math.nan,
        "per_study": per_study,
    }
    labels = per_study["label"].astype(int).to_numpy()
    for route in ("true_part", "two_stage"):
        decision = per_study[f"{route}_decision"].to_numpy()
        scored = np.isfinite(decision)
        # An unscored study is a wrong answer: the pipeline could not give one.
        correct = scored & (np.nan_to_num(decision, nan=-1) == labels)
        result[f"{route}_unscored"] = int((~scored).sum())
        result[f"{route}_accuracy"] = float(correct.mean()) if len(labels) else math.nan
        filled = np.where(scored, decision, 1 - labels).astype(int)
        result[f"{route}_kappa"] = binary_metrics(labels, filled, 0.5)["kappa"] if len(labels) else math.nan
    return result


def two_stage_from_predictions(router_predictions: pd.DataFrame, classes: Sequence[str],
                               fracture_predictions: Mapping[str, pd.DataFrame], thresholds: Mapping[str, float],
                               parts: Sequence[str] | None = None) -> dict[str, Any]:
    """``two_stage_accuracy`` from image-level prediction tables of one split.

    ``router_predictions``: the body-part classifier's table (``label`` = true part,
    ``prob_<class>``). ``fracture_predictions``: part -> that part's fracture model's table on
    the same images (all parts, so that misrouted studies can be scored too). Studies are
    scored at study level (mean of images) and limited to true parts in ``parts`` (default: the
    parts with a fracture model).
    """
    if not fracture_predictions:
        raise ParameterError("no fracture model predictions: train a fracture model first")
    router_studies = aggregate_body_part_studies(router_predictions, classes)
    fracture_studies = {part: aggregate_studies(frame, "mean") for part, frame in fracture_predictions.items()}
    scores = pd.concat([frame[["study", "probability"]].assign(model_part=part)
                        for part, frame in fracture_studies.items()], ignore_index=True)
    labels = pd.concat([frame[["study", "label"]] for frame in fracture_studies.values()]).drop_duplicates("study")
    studies = (router_studies[["study", "label", "predicted"]]
               .rename(columns={"label": "body_part", "predicted": "routed_part"})
               .merge(labels, on="study", how="inner"))
    studies = studies[studies["body_part"].isin(list(parts or fracture_predictions))]
    return two_stage_accuracy(studies, scores, thresholds)
