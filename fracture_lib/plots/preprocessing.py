"""Figures of notebook 02: preprocessing steps, augmentation examples, cache and pipeline speed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fracture_lib.errors import ParameterError
from fracture_lib.pipeline import AugmentSettings, augment_images
from fracture_lib.preprocess import PreprocessSettings, apply_clahe, preprocess_image


def _show(axis: Axes, image: np.ndarray, title: str) -> None:
    """Draw a greyscale image on its full 0..255 scale, without ticks."""
    axis.imshow(image, cmap="gray", vmin=0, vmax=255)
    axis.set_title(title, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])


def preprocessing_steps(samples: pd.DataFrame, settings: PreprocessSettings) -> Figure:
    """Per sample (one row per body part): raw image, CLAHE, model input, grey-level histograms.

    ``samples`` has columns ``body_part`` and ``image`` (raw uint8 (H, W) arrays). The model
    input is what the cache stores with ``settings`` (CLAHE only when ``settings.clahe``).
    """
    if len(samples) == 0:
        raise ParameterError("no sample images to show: check the body parts")
    clahe_settings = PreprocessSettings(img_size=settings.img_size, clahe=True,
                                        clahe_clip_limit=settings.clahe_clip_limit,
                                        clahe_tile_grid=settings.clahe_tile_grid)
    figure = Figure(figsize=(13, 3.2 * len(samples)), layout="constrained")
    axes = figure.subplots(len(samples), 4, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 1.3]})
    for row, (_, sample) in enumerate(samples.iterrows()):
        raw = sample["image"]
        equalised = apply_clahe(raw, clahe_settings)
        model_input = preprocess_image(raw, settings)
        height, width = raw.shape
        part = str(sample["body_part"])
        _show(axes[row, 0], raw, f"{part}: original {width}x{height} px")
        _show(axes[row, 1], equalised, f"CLAHE (clip {settings.clahe_clip_limit:g}, "
                                       f"{settings.clahe_tile_grid}x{settings.clahe_tile_grid} tiles)")
        _show(axes[row, 2], model_input, f"model input {settings.img_size}x{settings.img_size} px"
                                         f"{' (with CLAHE)' if settings.clahe else ''}")
        bins = np.arange(257)
        axes[row, 3].hist(raw.ravel(), bins=bins, density=True, histtype="step", label="original")
        axes[row, 3].hist(equalised.ravel(), bins=bins, density=True, histtype="step", label="CLAHE")
        axes[row, 3].set_yscale("log")
        axes[row, 3].set_xlabel("grey level (0 = black, 255 = white)")
        axes[row, 3].set_ylabel("share of pixels (log)")
        axes[row, 3].set_title("grey-level histogram", fontsize=9)
        axes[row, 3].legend(fontsize=8)
    figure.suptitle("Preprocessing: original, contrast-equalised (CLAHE), letterboxed model input")
    return figure


def augmentation_grid(image: np.ndarray, settings: AugmentSettings, count: int = 11, seed: int = 42,
                      title: str = "Augmentation examples") -> Figure:
    """The model input ``image`` (uint8 (S, S)) and ``count`` random augmentations of it."""
    if image.ndim != 2 or count < 1:
        raise ParameterError(f"expected one (S, S) image and count >= 1, got {image.shape} and {count}")
    augmented = augment_images(np.repeat(image[np.newaxis], count, axis=0), seed, settings)
    columns = min(6, count + 1)
    rows = math.ceil((count + 1) / columns)
    figure = Figure(figsize=(2.2 * columns, 2.4 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    _show(axes[0, 0], image, "model input")
    for position, version in enumerate(augmented, start=1):
        _show(axes.ravel()[position], version, f"augmented {position}")
    parts = [f"flip {'on' if settings.flip else 'off'}", f"rotation up to ±{settings.rotation_degrees:g}°"]
    if settings.zoom:
        parts.append(f"zoom ±{settings.zoom:.0%}")
    if settings.contrast:
        parts.append(f"contrast ±{settings.contrast:.0%}")
    figure.suptitle(f"{title} ({', '.join(parts)})")
    return figure


def loader_speeds(speeds: pd.DataFrame, title: str = "Input pipeline throughput (no model)") -> Figure:
    """Horizontal bars of images per second, one per loader (columns ``loader``, ``images_per_second``)."""
    figure = Figure(figsize=(8, 0.7 * len(speeds) + 1.4), layout="constrained")
    axis = figure.subplots()
    bars = axis.barh(speeds["loader"], speeds["images_per_second"], color=["tab:blue", "tab:gray", "tab:orange",
                                                                          "tab:green"][:len(speeds)])
    for bar, value in zip(bars, speeds["images_per_second"]):
        axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}", va="center", fontsize=9)
    axis.set_xlim(0, 1.15 * float(speeds["images_per_second"].max()))
    axis.set_xlabel("images per second (higher is faster)")
    axis.invert_yaxis()
    axis.set_title(title)
    axis.grid(axis="x", alpha=0.3)
    return figure
