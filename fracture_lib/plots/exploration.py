"""Figures of notebook 01 (data exploration): composition, views, sizes, intensities, samples, split.

Every function takes the index (or a sample drawn from it by ``mura.sample_image_statistics`` /
``mura.sample_images``, or ``mura.summarize_index``'s table) and returns a
``matplotlib.figure.Figure``; none reads files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fracture_lib.config import ALL_BODY_PARTS
from fracture_lib.realism import FilmComparison

# One colour per label, one per split, used by every figure of the notebook.
LABEL_COLOURS = {0: "#4C72B0", 1: "#DD5555"}
LABEL_TEXT = {0: "normal (negative)", 1: "abnormal (positive)"}
SPLIT_COLOURS = {"train": "#4C72B0", "val": "#55A868", "test": "#C44E52"}
SPLIT_ORDER = ("train", "val", "test")


def _part_order(frame: pd.DataFrame) -> list[str]:
    """Body parts present in ``frame``, in MURA's order."""
    present = set(frame["body_part"])
    return [part for part in ALL_BODY_PARTS if part in present]


def _grouped_bars(axis, table: pd.DataFrame, colours: dict, labels: dict | None = None, value_labels: bool = True) -> None:
    """Draw ``table`` (rows = x groups, columns = bar series) as grouped bars, optionally labelled."""
    width = 0.8 / max(1, len(table.columns))
    positions = np.arange(len(table.index))
    for number, column in enumerate(table.columns):
        offset = (number - (len(table.columns) - 1) / 2) * width
        bars = axis.bar(positions + offset, table[column].to_numpy(), width=width, color=colours.get(column),
                        label=(labels or {}).get(column, str(column)))
        if value_labels:
            axis.bar_label(bars, fmt="{:,.0f}", fontsize=7, padding=1)
    axis.set_xticks(positions, [str(name) for name in table.index])
    # Head room above the tallest bar for the one-row legend that callers place at the top.
    axis.margins(y=0.3)


def plot_counts_per_part(index: pd.DataFrame) -> Figure:
    """Images and studies per body part, normal vs abnormal (bars)."""
    figure = Figure(figsize=(12, 4.2), layout="constrained")
    axes = figure.subplots(1, 2)
    parts = _part_order(index)
    images = index.groupby(["body_part", "label"]).size().unstack(fill_value=0).reindex(parts)
    studies = index.drop_duplicates("study").groupby(["body_part", "label"]).size().unstack(fill_value=0).reindex(parts)
    for axis, table, unit in ((axes[0], images, "images"), (axes[1], studies, "studies")):
        _grouped_bars(axis, table, LABEL_COLOURS, LABEL_TEXT)
        axis.set_xlabel("body part")
        axis.set_ylabel(f"number of {unit}")
        axis.set_title(f"{unit.capitalize()} per body part and label")
        axis.legend(title="label", ncol=len(table.columns), loc="upper left")
    figure.suptitle("Dataset composition (all splits)")
    return figure


def plot_views_per_study(index: pd.DataFrame) -> Figure:
    """How many images (views) each study has, per body part (share of studies)."""
    figure = Figure(figsize=(8, 4.2), layout="constrained")
    axis = figure.subplots()
    views = index.groupby(["body_part", "study"]).size().rename("views").reset_index()
    shares = views.groupby("body_part")["views"].value_counts(normalize=True).unstack(fill_value=0.0)
    shares = shares.reindex(_part_order(index)).T.sort_index() * 100
    _grouped_bars(axis, shares, {}, value_labels=False)
    axis.set_xlabel("images per study (views)")
    axis.set_ylabel("share of studies (%)")
    axis.set_title("Views per study, by body part")
    axis.legend(title="body part")
    return figure


def plot_image_sizes(stats: pd.DataFrame) -> Figure:
    """Width vs height of sampled images, and the distribution of their long side (pixels)."""
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    axes = figure.subplots(1, 2)
    long_side = np.maximum(stats["height"], stats["width"])
    bins = np.linspace(long_side.min() - 0.5, long_side.max() + 0.5, 25)
    for part in _part_order(stats):
        rows = stats["body_part"] == part
        axes[0].scatter(stats.loc[rows, "width"], stats.loc[rows, "height"], s=12, alpha=0.6, label=part)
        axes[1].hist(long_side[rows], bins=bins, alpha=0.55, label=part)
    axes[0].set_xlabel("width (pixels)")
    axes[0].set_ylabel("height (pixels)")
    axes[0].set_title("Image width vs height")
    axes[1].set_xlabel("long side (pixels)")
    axes[1].set_ylabel("number of images")
    axes[1].set_title("Distribution of the long side")
    for axis in axes:
        axis.legend(title="body part")
    figure.suptitle(f"Image sizes ({len(stats)} sampled images)")
    return figure


def plot_intensity_histograms(stats: pd.DataFrame) -> Figure:
    """Mean grey-level histogram per body part, normal vs abnormal (share of pixels per level)."""
    parts = _part_order(stats)
    figure = Figure(figsize=(4.2 * len(parts), 3.8), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(parts), sharey=True))
    levels = np.arange(256)
    for axis, part in zip(axes, parts):
        for label, colour in LABEL_COLOURS.items():
            rows = stats[(stats["body_part"] == part) & (stats["label"] == label)]
            if rows.empty:
                continue
            histograms = np.stack(rows["histogram"].to_numpy()).astype(float)
            shares = histograms / histograms.sum(axis=1, keepdims=True)
            axis.plot(levels, shares.mean(axis=0) * 100, color=colour, label=f"{LABEL_TEXT[label]} (n={len(rows)})")
        axis.set_title(part)
        axis.set_xlabel("grey level (0-255)")
        axis.set_xlim(0, 255)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("share of pixels (%)")
    figure.suptitle("Intensity histograms (mean over sampled images)")
    return figure


def plot_sample_grid(samples: pd.DataFrame) -> Figure:
    """Example radiographs: one row per body part, normal examples left, abnormal right."""
    parts = _part_order(samples)
    per_label = int(samples.groupby(["body_part", "label"]).size().max())
    columns = 2 * per_label
    figure = Figure(figsize=(2.2 * columns, 2.4 * len(parts)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(parts), columns))
    for row, part in enumerate(parts):
        for label in (0, 1):
            images = samples[(samples["body_part"] == part) & (samples["label"] == label)]
            for slot in range(per_label):
                axis = axes[row, label * per_label + slot]
                axis.set_xticks([])
                axis.set_yticks([])
                if slot < len(images):
                    image = images.iloc[slot]["image"]
                    axis.imshow(image, cmap="gray", vmin=0, vmax=255)
                    axis.set_xlabel(f"{image.shape[1]}x{image.shape[0]} px", fontsize=7)
                if row == 0 and slot == 0:
                    axis.set_title(LABEL_TEXT[label], fontsize=9, color=LABEL_COLOURS[label])
            axes[row, 0].set_ylabel(part, fontsize=11)
    figure.suptitle("Sample radiographs per body part and label")
    return figure


def plot_split_summary(summary: pd.DataFrame) -> Figure:
    """Patients per split and body part, and the share of abnormal studies (from ``summarize_index``)."""
    figure = Figure(figsize=(12, 4.2), layout="constrained")
    axes = figure.subplots(1, 2)
    parts = _part_order(summary)
    splits = [split for split in SPLIT_ORDER if split in set(summary["split"])]
    patients = summary.groupby(["body_part", "split"])["patients"].sum().unstack(fill_value=0)
    patients = patients.reindex(index=parts, columns=splits)
    studies = summary.pivot_table(index=["body_part", "split"], columns="label", values="studies",
                                  aggfunc="sum", fill_value=0)
    abnormal = (studies.get(1, 0) / studies.sum(axis=1) * 100).unstack().reindex(index=parts, columns=splits)
    _grouped_bars(axes[0], patients, SPLIT_COLOURS)
    axes[0].set_ylabel("number of patients")
    axes[0].set_title("Patients per split (each patient in exactly one split)")
    _grouped_bars(axes[1], abnormal.round(1), SPLIT_COLOURS)
    axes[1].set_ylabel("abnormal studies (%)")
    axes[1].set_title("Share of abnormal studies per split")
    for axis in axes:
        axis.set_xlabel("body part")
        axis.legend(title="split", ncol=len(splits), loc="upper left")
    figure.suptitle("Patient-level split: train / val (from MURA train) and test (MURA valid)")
    return figure


def plot_demo_beside_real(comparison: FilmComparison, films_per_row: int = 3) -> Figure:
    """Demo films (top row) beside real ones (bottom row), and their grey-level histograms in the body."""
    rows = [("demo (synthetic)", comparison.demo_films)]
    if comparison.real_films:
        rows.append(("real", comparison.real_films))
    figure = Figure(figsize=(2.4 * films_per_row + 5.0, 2.6 * len(rows) + 0.4), layout="constrained")
    grid = figure.add_gridspec(len(rows), films_per_row + 2)
    for row, (name, films) in enumerate(rows):
        for slot in range(films_per_row):
            axis = figure.add_subplot(grid[row, slot])
            axis.set_xticks([])
            axis.set_yticks([])
            if slot < len(films):
                axis.imshow(films[slot], cmap="gray", vmin=0, vmax=255)
                axis.set_xlabel(f"{films[slot].shape[1]}x{films[slot].shape[0]} px", fontsize=7)
        figure.axes[row * films_per_row].set_ylabel(name, fontsize=11)
    histogram_axis = figure.add_subplot(grid[:, films_per_row:])
    levels = np.arange(256)
    histogram_axis.plot(levels, comparison.demo_histogram * 100, color="#4C72B0",
                        label=f"demo ({comparison.demo_count} films)")
    if comparison.real_histogram is not None:
        histogram_axis.plot(levels, comparison.real_histogram * 100, color="#C44E52",
                            label=f"real ({comparison.real_count} films)")
        histogram_axis.set_title(f"Grey levels inside the body\nWasserstein distance {comparison.distance:.1f} grey levels",
                                 fontsize=10)
    else:
        histogram_axis.set_title("Grey levels inside the body (no real films found)", fontsize=10)
    histogram_axis.set_xlabel("grey level (0-255)")
    histogram_axis.set_ylabel("share of body pixels (%)")
    histogram_axis.set_xlim(0, 255)
    histogram_axis.legend(fontsize=8)
    figure.suptitle("Demo films beside real radiographs")
    return figure
