"""Image preprocessing: how a decoded radiograph becomes a square 8-bit model input.

``PreprocessSettings`` (size, optional CLAHE) and ``preprocess_image`` (CLAHE at full resolution,
an aspect-preserving resize, centred padding) are shared by training and scoring: ``predict``
applies the same decoder and ``preprocess_image`` with the settings saved in a run, so a new image
gets exactly the preprocessing the model was trained with. ``fracture_lib.cache`` stores the
result for every image of a data set once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from fracture_lib.errors import ParameterError
# The one decoder (re-exported: callers have long used preprocess.load_image).
from fracture_lib.imageio import load_image, to_grey_uint8  # noqa: F401

@dataclass(frozen=True)
class PreprocessSettings:
    """How a radiograph becomes a square 8-bit model input."""

    img_size: int = 128
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.img_size, bool) or not isinstance(self.img_size, (int, np.integer)) or self.img_size < 16:
            raise ParameterError(f"img_size={self.img_size!r} must be an integer of at least 16 pixels")
        if not isinstance(self.clahe, (bool, np.bool_)):
            raise ParameterError(f"clahe={self.clahe!r} must be True or False")
        if not self.clahe_clip_limit > 0:
            raise ParameterError(f"clahe_clip_limit={self.clahe_clip_limit} must be positive")
        if not isinstance(self.clahe_tile_grid, (int, np.integer)) or self.clahe_tile_grid < 1:
            raise ParameterError(f"clahe_tile_grid={self.clahe_tile_grid!r} must be an integer of at least 1")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dictionary."""
        return {"img_size": int(self.img_size), "clahe": bool(self.clahe),
                "clahe_clip_limit": float(self.clahe_clip_limit), "clahe_tile_grid": int(self.clahe_tile_grid)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PreprocessSettings":
        """Rebuild settings saved with ``to_dict`` (unknown keys are ignored)."""
        known = {key: values[key] for key in ("img_size", "clahe", "clahe_clip_limit", "clahe_tile_grid") if key in values}
        return cls(**known)


def letterbox_geometry(height: int, width: int, img_size: int) -> tuple[float, int, int]:
    """Return ``(scale, pad_top, pad_left)`` of the aspect-preserving resize into a square.

    A pixel ``(row, col)`` of the original image lands at
    ``(row * scale + pad_top, col * scale + pad_left)`` in the model input.
    """
    scale = img_size / max(height, width)
    new_height, new_width = _resized_shape(height, width, scale)
    return scale, (img_size - new_height) // 2, (img_size - new_width) // 2


def _resized_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """The image's height and width after scaling, at least one pixel each."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def apply_clahe(image: np.ndarray, settings: PreprocessSettings) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a uint8 (H, W) image."""
    grid = (int(settings.clahe_tile_grid), int(settings.clahe_tile_grid))
    return cv2.createCLAHE(clipLimit=float(settings.clahe_clip_limit), tileGridSize=grid).apply(image)


def preprocess_image(image: np.ndarray, settings: PreprocessSettings) -> np.ndarray:
    """Apply optional CLAHE, resize the long side to ``img_size`` and pad to a centred square.

    CLAHE runs at the original resolution, where its tiles see the anatomy in full detail.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        image = to_grey_uint8(image)
    if settings.clahe:
        image = apply_clahe(image, settings)
    height, width = image.shape
    size = int(settings.img_size)
    scale, pad_top, pad_left = letterbox_geometry(height, width, size)
    new_height, new_width = _resized_shape(height, width, scale)
    # Area interpolation when shrinking keeps thin fracture lines instead of aliasing them away.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_width, new_height), interpolation=interpolation)
    square = np.zeros((size, size), dtype=np.uint8)
    square[pad_top:pad_top + new_height, pad_left:pad_left + new_width] = resized
    return square


def load_and_preprocess(path: str | os.PathLike[str], settings: PreprocessSettings) -> np.ndarray:
    """Read one image file and return its ``(img_size, img_size)`` uint8 model input."""
    return preprocess_image(load_image(path), settings)
