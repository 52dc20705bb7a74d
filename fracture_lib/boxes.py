"""Fracture boxes in the model's square: from the saved image's pixels, as masks, as training targets.

Boxes come from the data source (the demo set's ``fracture_boxes.csv``, FracAtlas's outlines:
``datasets.load_fracture_boxes``) in pixels of the saved image. The model sees a letterboxed square
(``preprocess.preprocess_image``: aspect-preserving resize, then centred zero padding), so
``box_to_model_coordinates`` maps a box onto it. Grad-CAM's pointing game (``explain``) and the
box supervision of training (``BoxTargets``, ``box_supervision``) both use these coordinates.

``BoxTargets`` turns each training image's boxes into a target on the last convolutional layer's
grid: a cell is 1 where any of its pixels lies inside a fracture box, after the very flip, rotation,
zoom and shift the image got (``pipeline.random_transforms`` from the same batch seed), else 0.
A second channel says whether the image's target is known: an image labelled normal has no
fracture anywhere (known, all zeros); an abnormal image is known only when it has a box.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from fracture_lib import preprocess
from fracture_lib.datasets.table import BOX_COLUMNS
from fracture_lib.errors import ParameterError


def box_to_model_coordinates(box: Sequence[float], original_shape: Sequence[int], img_size: int) -> tuple[float, float, float, float]:
    """Map ``(x_min, y_min, x_max, y_max)`` from the saved image's pixels to the model's square.

    Box values are positions in the saved image with pixel centres at whole numbers (as OpenCV
    draws, and as ``fracture_boxes.csv`` records them). The result uses the model square's edge
    coordinates (pixel ``c`` spans ``[c, c + 1)``), so pixel ``(row, col)`` is inside when
    ``x_min <= col + 0.5 <= x_max`` and ``y_min <= row + 0.5 <= y_max`` (see ``box_mask``).
    """
    x_min, y_min, x_max, y_max = (float(value) for value in box)
    if x_max < x_min or y_max < y_min:
        raise ParameterError(f"box {tuple(box)} has its maximum below its minimum")
    height, width = int(original_shape[0]), int(original_shape[1])
    if height < 1 or width < 1 or img_size < 1:
        raise ParameterError(f"bad image shape {tuple(original_shape)} or img_size {img_size}")
    # The very geometry preprocess_image applies: one scale, then centred padding.
    scale, top, left = preprocess.letterbox_geometry(height, width, img_size)
    return (left + (x_min + 0.5) * scale, top + (y_min + 0.5) * scale,
            left + (x_max + 0.5) * scale, top + (y_max + 0.5) * scale)


def model_boxes(boxes: pd.DataFrame, shapes: dict[str, tuple[int, int]], img_size: int) -> pd.DataFrame:
    """``boxes`` (``path`` + ``BOX_COLUMNS`` in original pixels) in model coordinates.

    ``shapes`` maps each path to its original (H, W); rows whose path has no shape are dropped.
    """
    rows = []
    for record in boxes.itertuples(index=False):
        shape = shapes.get(record.path)
        if shape is None:
            continue
        mapped = box_to_model_coordinates([getattr(record, name) for name in BOX_COLUMNS], shape, img_size)
        rows.append({"path": record.path, **dict(zip(BOX_COLUMNS, mapped))})
    return pd.DataFrame(rows, columns=["path", *BOX_COLUMNS])


def load_model_boxes(data_root: str | os.PathLike[str], paths: Sequence[str], img_size: int) -> pd.DataFrame:
    """The fracture boxes of ``paths`` (index paths), mapped to the model's square.

    ``data_root`` is a data source (or its root): the demo set's ``fracture_boxes.csv`` or
    FracAtlas's outlines (``datasets.load_fracture_boxes``), with each boxed image's size; an empty
    frame when the data have no boxes (real MURA, manifests).
    """
    from fracture_lib import datasets

    source = datasets.resolve_source(data_root)
    root = source.root
    boxes = datasets.load_fracture_boxes(source)
    if boxes.empty:
        return pd.DataFrame(columns=["path", *BOX_COLUMNS])
    boxes = boxes[boxes["path"].isin(set(paths))]
    shapes = {path: image_shape(root / path) for path in boxes["path"].unique()}
    return model_boxes(boxes, shapes, img_size)


def require_fracture_boxes(data_root, message: str) -> None:
    """Raise ``FractureLibError(message)`` when a data source has no fracture box at all (real MURA, manifests).

    ``message`` names the setting that needs the boxes; ``{location}`` in it becomes the data's location.
    """
    from fracture_lib import datasets
    from fracture_lib.errors import FractureLibError

    source = datasets.resolve_source(data_root)
    if datasets.load_fracture_boxes(source).empty:
        raise FractureLibError(message.format(location=source.location))


def image_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header (decoding it only as a fallback)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
        return int(height), int(width)
    except (OSError, UnidentifiedImageError):
        return preprocess.load_image(path).shape[:2]


def box_mask(boxes: Sequence[Sequence[float]] | np.ndarray, shape: tuple[int, int], tolerance: float = 0.0) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centre lies in any of ``boxes`` (model coordinates)."""
    box_array = np.asarray(boxes, dtype=float).reshape(-1, 4)
    row_centres = np.arange(shape[0])[:, None] + 0.5
    column_centres = np.arange(shape[1])[None, :] + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x_min, y_min, x_max, y_max in box_array:
        mask |= ((column_centres >= x_min - tolerance) & (column_centres <= x_max + tolerance)
                 & (row_centres >= y_min - tolerance) & (row_centres <= y_max + tolerance))
    return mask


@dataclass(frozen=True)
class BoxTargets:
    """Per-image fracture boxes (model coordinates) of a set of images, for grid targets.

    ``boxes[i]`` is a ``(k, 4)`` array of image ``i``'s boxes (``k`` may be 0), ``known[i]``
    whether its target is known, ``img_size`` the model's square and ``grid`` the ``(rows,
    columns)`` of the layer the targets are for.
    """

    boxes: tuple[np.ndarray, ...]
    known: np.ndarray
    img_size: int
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        if len(self.boxes) != len(self.known):
            raise ParameterError(f"{len(self.boxes)} box entries but {len(self.known)} known flags")
        if self.img_size < 1 or min(self.grid) < 1:
            raise ParameterError(f"bad img_size {self.img_size} or grid {self.grid}")

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, boxes: pd.DataFrame, img_size: int,
                   grid: tuple[int, int]) -> "BoxTargets":
        """Targets of ``frame``'s images (``path``, ``label``) from ``boxes`` in model coordinates.

        A normal image is known (nothing to find); an abnormal one is known when it has a box.
        """
        grouped = {path: group[BOX_COLUMNS].to_numpy(dtype=np.float64) for path, group in boxes.groupby("path")}
        empty = np.zeros((0, 4), dtype=np.float64)
        labels = frame["label"].to_numpy().astype(int)
        per_image = tuple(grouped.get(path, empty) if label == 1 else empty
                          for path, label in zip(frame["path"], labels))
        known = np.array([label == 0 or len(image_boxes) > 0 for label, image_boxes in zip(labels, per_image)])
        return cls(per_image, known, int(img_size), (int(grid[0]), int(grid[1])))

    @classmethod
    def unknown(cls, count: int, img_size: int, grid: tuple[int, int]) -> "BoxTargets":
        """Targets that teach nothing (every image unknown): what validation batches carry."""
        return cls(tuple(np.zeros((0, 4)) for _ in range(count)), np.zeros(count, dtype=bool), int(img_size),
                   (int(grid[0]), int(grid[1])))

    def batch(self, positions: np.ndarray, matrices: np.ndarray | None = None) -> np.ndarray:
        """Float32 ``(B, rows, columns, 2)``: each image's cell targets, then its known flag.

        ``matrices`` (``(B, 2, 3)``, from ``pipeline.random_transforms``) moves the boxes as the
        augmentation moved the image; None leaves them in place.
        """
        rows, columns = self.grid
        result = np.zeros((len(positions), rows, columns, 2), dtype=np.float32)
        for slot, position in enumerate(np.asarray(positions, dtype=np.int64)):
            result[slot, :, :, 1] = float(self.known[position])
            image_boxes = self.boxes[position]
            if len(image_boxes) == 0:
                continue
            mask = box_mask(image_boxes, (self.img_size, self.img_size)).astype(np.uint8)
            if matrices is not None:
                mask = cv2.warpAffine(mask, matrices[slot], (self.img_size, self.img_size), flags=cv2.INTER_NEAREST,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            result[slot, :, :, 0] = grid_cells_touched(mask, self.grid)
        return result

    @property
    def positive_images(self) -> int:
        """How many images have at least one box."""
        return int(sum(len(image_boxes) > 0 for image_boxes in self.boxes))


def grid_cells_touched(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Float32 ``grid``: 1 for each cell of a ``(S, S)`` 0/1 mask that holds a masked pixel, else 0."""
    rows, columns = grid
    row_edges = np.linspace(0, mask.shape[0], rows + 1).round().astype(int)
    column_edges = np.linspace(0, mask.shape[1], columns + 1).round().astype(int)
    # Summed over each cell's pixels: reduceat takes the blocks between consecutive edges.
    per_row = np.add.reduceat(mask.astype(np.int32), row_edges[:-1], axis=0)
    per_cell = np.add.reduceat(per_row, column_edges[:-1], axis=1)
    return (per_cell > 0).astype(np.float32)
