"""Figures of notebook 03: learning curves and class balance."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure


def learning_curves(history: pd.DataFrame, metric: str = "auroc", title: str = "Learning curves") -> Figure:
    """Loss, the chosen metric (train vs validation) and the learning rate per epoch."""
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    epochs = history["epoch"] + 1 if "epoch" in history else pd.Series(range(1, len(history) + 1))
    panels = [("loss", "loss (weighted cross-entropy)"), (metric, metric.upper() if metric == "auroc" else metric)]
    for axis, (name, label) in zip(axes[:2], panels):
        if name in history:
            axis.plot(epochs, history[name], marker="o", label="train")
        if f"val_{name}" in history:
            axis.plot(epochs, history[f"val_{name}"], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.legend()
    if "learning_rate" in history:
        axes[2].plot(epochs, history["learning_rate"], marker="o", color="tab:green")
        axes[2].set_yscale("log")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate (log scale)")
    axes[2].set_title("Learning rate (divided by 10 on plateau)")
    axes[2].grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def split_counts(frame: pd.DataFrame, column: str, title: str) -> Figure:
    """Images per split and class (``column``: ``label`` or ``body_part``)."""
    counts = frame.groupby(["split", column]).size().unstack(fill_value=0)
    counts = counts.reindex([split for split in ("train", "val", "test") if split in counts.index])
    figure, axis = plt.subplots(figsize=(6, 3.5))
    counts.plot.bar(ax=axis, rot=0)
    axis.set_xlabel("split")
    axis.set_ylabel("images")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure
