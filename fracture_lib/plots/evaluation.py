"""Figures of notebooks 04 (evaluation) and 05 (summary).

ROC and precision-recall curves with the operating point, confusion matrices, the reliability
diagram, probability histograms per label, the Grad-CAM gallery, the body-part classifier's
confusion matrix and the comparison across body parts. Every function takes prediction tables
(``label`` 0/1 and ``probability`` columns, one per level: ``{"image": ..., "study": ...}``) or
arrays and returns a ``matplotlib.figure.Figure``; none reads files.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from fracture_lib import error_analysis, metrics
from fracture_lib.errors import ParameterError

LEVEL_COLOURS = {"image": "#4C72B0", "study": "#C44E52"}
LABEL_COLOURS = {0: "#4C72B0", 1: "#DD5555"}
LABEL_TEXT = {0: "normal", 1: "abnormal"}
# Gallery rows, in reading order: right calls first, then the two kinds of mistake.
OUTCOMES = error_analysis.OUTCOMES


def _plural(level: str) -> str:
    """``images``, ``studies``."""
    return level[:-1] + "ies" if level.endswith("y") else level + "s"


def _single_class(frame: pd.DataFrame) -> bool:
    """True when a table holds only normal or only abnormal items (curves are undefined)."""
    return frame["label"].nunique() < 2


def plot_roc_pr(levels: Mapping[str, pd.DataFrame], threshold: float, title: str = "") -> Figure:
    """ROC and precision-recall curves per level, with the operating point at ``threshold``."""
    figure = Figure(figsize=(12, 5), layout="constrained")
    roc_axis, pr_axis = figure.subplots(1, 2)
    for level, frame in levels.items():
        colour = LEVEL_COLOURS.get(level)
        labels, probabilities = frame["label"].to_numpy(), frame["probability"].to_numpy()
        point = metrics.binary_metrics(labels, probabilities, threshold)
        if not _single_class(frame):
            false_positive_rate, true_positive_rate, _ = roc_curve(labels, probabilities)
            roc_axis.plot(false_positive_rate, true_positive_rate, color=colour,
                          label=f"{level} (AUROC {point['auroc']:.3f})")
            precision, recall, _ = precision_recall_curve(labels, probabilities)
            pr_axis.plot(recall, precision, color=colour, drawstyle="steps-post",
                         label=f"{level} (AUPRC {point['auprc']:.3f})")
        # The operating point: where the chosen threshold puts this level.
        roc_axis.plot(1 - point["specificity"], point["sensitivity"], "o", color=colour, markersize=8,
                      markeredgecolor="black", label=f"{level} at threshold {threshold:.2f}")
        pr_axis.plot(point["sensitivity"], point["precision"], "o", color=colour, markersize=8,
                     markeredgecolor="black", label=f"{level} at threshold {threshold:.2f}")
        prevalence = labels.mean()
        pr_axis.axhline(prevalence, color=colour, linestyle=":", linewidth=1)
    roc_axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    roc_axis.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
                 title="ROC curve", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    pr_axis.set(xlabel="recall (sensitivity)", ylabel="precision",
                title="Precision-recall curve (dotted: share of abnormal)", xlim=(-0.02, 1.02), ylim=(-0.02, 1.05))
    roc_axis.legend(loc="lower right", fontsize=8)
    pr_axis.legend(loc="lower left", fontsize=8)
    figure.suptitle(title or "ROC and precision-recall curves")
    return figure


def plot_confusion_matrices(levels: Mapping[str, pd.DataFrame], threshold: float, title: str = "") -> Figure:
    """Confusion matrix per level at ``threshold``: counts and the share of each true class."""
    figure = Figure(figsize=(5.2 * len(levels), 4.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(levels)))
    names = [LABEL_TEXT[0], LABEL_TEXT[1]]
    for axis, (level, frame) in zip(axes, levels.items()):
        predicted = (frame["probability"].to_numpy() >= threshold).astype(int)
        counts = confusion_matrix(frame["label"].to_numpy(), predicted, labels=[0, 1])
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        annotations = np.array([[f"{count}\n{share:.0%}" for count, share in zip(row, share_row)]
                                for row, share_row in zip(counts, shares)])
        sns.heatmap(shares, annot=annotations, fmt="", cmap="Blues", vmin=0, vmax=1, cbar=False,
                    xticklabels=names, yticklabels=names, ax=axis, annot_kws={"fontsize": 12})
        axis.set(xlabel="predicted", ylabel="true label", title=f"{level.capitalize()} level ({len(frame)} {_plural(level)})")
    figure.suptitle(title or f"Confusion matrices at threshold {threshold:.2f} (share of each true class)")
    return figure


def plot_reliability(levels: Mapping[str, pd.DataFrame], n_bins: int = metrics.DEFAULT_N_BINS,
                     title: str = "") -> Figure:
    """Reliability diagram: observed share of abnormal against mean predicted probability per bin."""
    figure = Figure(figsize=(11, 5.5), layout="constrained")
    curve_axis, count_axis = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    edges = np.linspace(0, 1, n_bins + 1)
    for level, frame in levels.items():
        colour = LEVEL_COLOURS.get(level)
        labels, probabilities = frame["label"].to_numpy(), frame["probability"].to_numpy()
        observed, predicted = calibration_curve(labels, probabilities, n_bins=n_bins, strategy="uniform")
        ece = metrics.expected_calibration_error(labels, probabilities, n_bins)
        curve_axis.plot(predicted, observed, "o-", color=colour, label=f"{level} (ECE {ece:.3f})")
        count_axis.hist(probabilities, bins=edges, color=colour, alpha=0.5, label=level)
    curve_axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    curve_axis.set(xlabel="mean predicted probability of abnormal (per bin)", ylabel="observed share of abnormal",
                   title=f"Reliability diagram ({n_bins} equal-width bins)", xlim=(0, 1), ylim=(-0.02, 1.02))
    curve_axis.legend(loc="upper left", fontsize=8)
    count_axis.set(xlabel="predicted probability of abnormal", ylabel="number of items",
                   title="How many items fall in each bin")
    count_axis.legend(fontsize=8)
    figure.suptitle(title or "Calibration")
    return figure


def plot_probability_histograms(levels: Mapping[str, pd.DataFrame], threshold: float, title: str = "") -> Figure:
    """Distribution of the predicted probability, normal vs abnormal, per level, with the threshold."""
    figure = Figure(figsize=(5.5 * len(levels), 4.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(levels)))
    edges = np.linspace(0, 1, 21)
    for axis, (level, frame) in zip(axes, levels.items()):
        for label in (0, 1):
            values = frame.loc[frame["label"] == label, "probability"]
            axis.hist(values, bins=edges, color=LABEL_COLOURS[label], alpha=0.6,
                      label=f"{LABEL_TEXT[label]} ({len(values)})")
        axis.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.2f}")
        axis.set(xlabel="predicted probability of abnormal", ylabel=f"number of {_plural(level)}",
                 title=f"{level.capitalize()} level")
        axis.legend(fontsize=8, title="true label", title_fontsize=8)
    figure.suptitle(title or "Predicted probabilities by true label")
    return figure


def outcome(label: int, predicted: int) -> str:
    """``"true positive"``, ``"false positive"``, ``"false negative"`` or ``"true negative"``."""
    return str(error_analysis.outcomes([label], [predicted])[0])


def plot_gradcam_gallery(overlays: Sequence[np.ndarray], outcomes: Sequence[str], captions: Sequence[str],
                         boxes: Sequence[Sequence[float] | None] | None = None,
                         peaks: Sequence[tuple[int, int] | None] | None = None,
                         columns: int = 4, title: str = "") -> Figure:
    """Grad-CAM overlays in rows of true/false positives/negatives (``OUTCOMES`` order).

    ``overlays`` are RGB uint8 images; ``outcomes`` says each one's row; ``captions`` go under
    the images. ``boxes`` (per image: one or several x_min, y_min, x_max, y_max in model
    coordinates, see ``boxes.box_to_model_coordinates``, or None) are drawn in white; ``peaks``
    (row, col) as a cross: the synthetic fracture and the heatmap's maximum.
    """
    items_by_outcome = {name: [] for name in OUTCOMES}
    for number, name in enumerate(outcomes):
        if name not in items_by_outcome:
            raise ParameterError(f"unknown outcome {name!r}: choose from {', '.join(OUTCOMES)}")
        if len(items_by_outcome[name]) < columns:
            items_by_outcome[name].append(number)
    figure = Figure(figsize=(2.6 * columns + 1.2, 2.9 * len(OUTCOMES)), layout="constrained")
    axes = figure.subplots(len(OUTCOMES), columns, squeeze=False)
    for row, name in enumerate(OUTCOMES):
        for column in range(columns):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name, fontsize=11)
            numbers = items_by_outcome[name]
            if column >= len(numbers):
                axis.set_frame_on(False)
                if column == 0:
                    axis.text(0.5, 0.5, f"no {name}s", ha="center", va="center", transform=axis.transAxes)
                continue
            number = numbers[column]
            axis.imshow(overlays[number])
            axis.set_title(captions[number], fontsize=8)
            image_boxes = boxes[number] if boxes is not None else None
            # Model coordinates put pixel c at [c, c + 1); imshow centres it on c.
            for x_min, y_min, x_max, y_max in np.asarray(image_boxes if image_boxes is not None else [],
                                                         dtype=float).reshape(-1, 4):
                axis.add_patch(Rectangle((x_min - 0.5, y_min - 0.5), x_max - x_min, y_max - y_min,
                                         fill=False, edgecolor="white", linewidth=1.5))
            peak = peaks[number] if peaks is not None else None
            if peak is not None:
                axis.plot(peak[1], peak[0], "x", color="white", markersize=9, markeredgewidth=2)
    figure.suptitle(title or "Grad-CAM: where the model looked (red = most influence on 'abnormal')")
    return figure


def short_name(path: str) -> str:
    """``patient11185/study1 image2`` from a MURA image path (the study id a reader can look up)."""
    parts = str(path).replace("\\", "/").split("/")
    if len(parts) >= 3:
        study = parts[-2].split("_")[0]
        return f"{parts[-3]}/{study} {parts[-1].rsplit('.', 1)[0]}"
    return str(path)


def plot_body_part_confusion(confusion: pd.DataFrame, title: str = "") -> Figure:
    """The body-part classifier's confusion matrix (rows: true part), counts and row shares."""
    counts = confusion.to_numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    annotations = np.array([[f"{count}\n{share:.0%}" for count, share in zip(row, share_row)]
                            for row, share_row in zip(counts, shares)])
    size = 2.0 + 1.4 * len(confusion)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axis = figure.subplots()
    sns.heatmap(shares, annot=annotations, fmt="", cmap="Greens", vmin=0, vmax=1, cbar=False,
                xticklabels=list(confusion.columns), yticklabels=list(confusion.index), ax=axis)
    axis.set(xlabel="predicted body part", ylabel="true body part")
    axis.set_title(title or "Body-part classifier: confusion matrix (share of each true part)")
    return figure


def plot_summary_comparison(summary: pd.DataFrame, paper_kappa: Mapping[str, float] | None = None,
                            metric_names: Sequence[str] = ("kappa", "auroc", "sensitivity", "specificity"),
                            title: str = "") -> Figure:
    """Study-level test metrics per body part with 95% CIs, beside the MURA paper's kappa.

    ``summary`` is ``summary.summary_table``'s frame; parts without metrics are left out.
    """
    available = summary[summary["status"] == "ok"].reset_index(drop=True)
    figure = Figure(figsize=(max(7.0, 2.4 * len(metric_names) + 2.4), 4.8), layout="constrained")
    axis = figure.subplots()
    palette = sns.color_palette("deep", max(1, len(available)))
    width = 0.8 / max(1, len(available))
    positions = np.arange(len(metric_names))
    for number, row in available.iterrows():
        values = np.array([row[name] for name in metric_names], dtype=float)
        low = np.array([row[f"{name}_ci_low"] for name in metric_names], dtype=float)
        high = np.array([row[f"{name}_ci_high"] for name in metric_names], dtype=float)
        errors = np.vstack([np.nan_to_num(values - low), np.nan_to_num(high - values)])
        axis.bar(positions + number * width, np.nan_to_num(values), width, yerr=errors, capsize=3,
                 color=palette[number], label=f"{row['body_part']} (ours)")
    if paper_kappa and "kappa" in metric_names:
        kappa_position = list(metric_names).index("kappa")
        label = "MURA paper's DenseNet-169 kappa (hidden test set)"
        for number, row in available.iterrows():
            reference = paper_kappa.get(row["body_part"])
            if reference is not None:
                axis.plot(kappa_position + number * width, reference, marker="*", markersize=13, color="black",
                          linestyle="none", label=label)
                label = None
    axis.set_xticks(positions + width * (len(available) - 1) / 2, list(metric_names))
    axis.set(xlabel="metric", ylabel="value on the test split (study level)",
             ylim=(min(0.0, axis.get_ylim()[0]), 1.05))
    axis.axhline(0, color="black", linewidth=0.8)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_title(title or "Study-level test metrics per body part (bars: 95% bootstrap CIs)")
    return figure
