"""Figures of notebook 03: the run's data per split and class, and its learning curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

METRIC_LABELS = {"auroc": "AUROC", "accuracy": "accuracy", "loss": "loss (class-weighted cross-entropy)"}


def learning_curves(history: pd.DataFrame, metric: str = "auroc", title: str = "Learning curves",
                    best_epoch: int | None = None) -> Figure:
    """Loss and ``metric`` (training vs validation) and the learning rate, per epoch.

    ``history`` is a run's ``history.csv`` (Keras' ``epoch`` column counts from 0; the figure
    counts from 1). ``best_epoch`` (0-based), when given, is marked: its weights are the saved ones.
    """
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    epochs = history["epoch"] + 1 if "epoch" in history else pd.Series(range(1, len(history) + 1))
    for axis, name in zip(axes[:2], ("loss", metric)):
        label = METRIC_LABELS.get(name, name)
        if name in history:
            axis.plot(epochs, history[name], marker="o", label="training (augmented)")
        if f"val_{name}" in history:
            axis.plot(epochs, history[f"val_{name}"], marker="o", label="validation")
        axis.set_title(label)
        axis.set_ylabel(label)
    if "learning_rate" in history:
        axes[2].plot(epochs, history["learning_rate"], marker="o", color="tab:green")
        axes[2].set_yscale("log")
    axes[2].set_title("Learning rate (divided by 10 on a plateau)")
    axes[2].set_ylabel("learning rate (log scale)")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if best_epoch is not None:
            axis.axvline(best_epoch + 1, color="grey", linestyle="--", linewidth=1, label="best epoch (saved)")
    for axis in axes[:2]:
        axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def class_counts(counts: pd.DataFrame, title: str = "Images per split and class") -> Figure:
    """Grouped bars of images per split (rows) and class (columns); a ``total`` column is left out."""
    classes = counts.drop(columns=["total"], errors="ignore")
    figure, axis = plt.subplots(figsize=(6.5, 3.5))
    classes.plot.bar(ax=axis, rot=0)
    axis.set_xlabel("split")
    axis.set_ylabel("images")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(title=classes.columns.name)
    figure.tight_layout()
    return figure
