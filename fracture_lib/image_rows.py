"""``ImageRows``: some rows of a large image array (the cache's memory map), without copying them.

A split of the cache, or a subset of a larger cache, is a view: the whole array and the row
numbers. ``pipeline.make_dataset`` gathers each batch from the array itself, so no step of
training or scoring holds a second copy of the images (see ``fracture_lib.cache``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fracture_lib.errors import ParameterError


class ImageRows:
    """Some rows of a larger image array, selected without copying them.

    ``source`` is the whole array (usually the cache's memory map) and ``positions`` the rows of
    it that this selection holds, in order. It behaves like a read-only ``(len(positions), S, S)``
    array for the operations the library needs: ``len``, ``shape``, ``dtype``, indexing (a row,
    or a smaller selection) and ``np.asarray``, which copies (only what is asked for). The input
    pipeline (``pipeline.make_dataset``) gathers each batch from ``source`` directly.
    """

    def __init__(self, source: np.ndarray, positions: Sequence[int] | np.ndarray) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        if positions.ndim != 1:
            raise ParameterError(f"positions must be one-dimensional, got shape {positions.shape}")
        if len(positions) and (positions.min() < 0 or positions.max() >= len(source)):
            raise ParameterError(f"positions must lie in 0..{len(source) - 1}")
        self.source = source
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.positions), *self.source.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    @property
    def ndim(self) -> int:
        return self.source.ndim

    @property
    def nbytes(self) -> int:
        """The bytes the selected rows hold (not the source's)."""
        return int(np.prod(self.shape)) * self.source.dtype.itemsize

    def __getitem__(self, key: Any) -> Any:
        """A row (an array) for an integer; a smaller ``ImageRows`` for a slice, a mask or row numbers."""
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return np.asarray(self[rows])[(slice(None), *rest) if not isinstance(rows, (int, np.integer)) else rest]
        if isinstance(key, (int, np.integer)):
            return self.source[self.positions[key]]
        return ImageRows(self.source, self.positions[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # Sorted reads are much faster on a memory map; the rows are put back in order after.
        order = np.argsort(self.positions, kind="stable")
        gathered = np.empty(self.shape, dtype=self.source.dtype)
        gathered[order] = self.source[self.positions[order]]
        return gathered if dtype is None else gathered.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ImageRows({len(self)} of {len(self.source)} rows, shape {self.shape}, {self.dtype})"


def source_and_positions(images: np.ndarray | ImageRows) -> tuple[np.ndarray, np.ndarray | None]:
    """The array to gather rows from and the row numbers (None: every row, in order)."""
    if isinstance(images, ImageRows):
        return images.source, images.positions
    return (images if isinstance(images, np.ndarray) else np.asarray(images)), None
