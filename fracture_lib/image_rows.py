"""``ImageRows``: some rows of a large image array (the cache's memory map), without copying them.

A split of the cache, or a subset of a larger cache, is a view: the whole array and the row
numbers. ``pipeline.make_dataset`` gathers each batch from the array itself, so no step of
training or scoring holds a second copy of the images (see ``fracture_lib.cache``).

``gather_rows`` reads a batch of a memory-mapped cache with ``os.preadv`` from the file rather
than through the mapping: the bytes come from the operating system's file cache either way, but
pages touched through a mapping stay counted in the process's resident memory, so an epoch over a
4-GB cache would leave the training process holding 4 GB more. Read with ``preadv``, only the
batch is the process's own.
"""

from __future__ import annotations

import mmap
import os
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
        gathered = gather_rows(self.source, self.positions)
        return gathered if dtype is None else gathered.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ImageRows({len(self)} of {len(self.source)} rows, shape {self.shape}, {self.dtype})"


def source_and_positions(images: np.ndarray | ImageRows) -> tuple[np.ndarray, np.ndarray | None]:
    """The array to gather rows from and the row numbers (None: every row, in order)."""
    if isinstance(images, ImageRows):
        return images.source, images.positions
    return (images if isinstance(images, np.ndarray) else np.asarray(images)), None


def _file_position(source: np.ndarray) -> tuple[str, int] | None:
    """The file and byte offset of row 0 of a C-contiguous memory map (or a row slice of one), else None."""
    mapping = getattr(source, "_mmap", None)
    if (not isinstance(source, np.memmap) or mapping is None or not getattr(source, "filename", None)
            or not source.flags.c_contiguous or source.ndim < 1):
        return None
    # The mapping starts at the offset rounded down to the allocation granularity; a slice's data
    # pointer has moved from there by as many bytes as its first row lies further into the file.
    mapping_start = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    mapped_from = source.offset - source.offset % mmap.ALLOCATIONGRANULARITY
    return str(source.filename), mapped_from + source.ctypes.data - mapping_start


def gather_rows(source: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Return ``source[rows]`` as a new array; a memory map's rows are read from its file (``preadv``)."""
    rows = np.asarray(rows, dtype=np.int64)
    position = _file_position(source) if hasattr(os, "preadv") else None
    if position is None or len(rows) == 0:
        if not isinstance(source, np.memmap) or len(rows) == 0:
            return source[rows]
        # Sorted reads are much faster through a mapping; the rows are put back in order after.
        order = np.argsort(rows, kind="stable")
        gathered = np.empty((len(rows), *source.shape[1:]), dtype=source.dtype)
        gathered[order] = source[rows[order]]
        return gathered
    if rows.min() < 0 or rows.max() >= len(source):
        raise IndexError(f"rows must lie in 0..{len(source) - 1}")
    filename, first_row = position
    row_bytes = source[0].nbytes
    batch = np.empty((len(rows), *source.shape[1:]), dtype=source.dtype)
    descriptor = os.open(filename, os.O_RDONLY)
    try:
        if np.all(np.diff(rows) == 1):
            # Consecutive rows (evaluation order): one read.
            _read_exactly(descriptor, memoryview(batch).cast("B"), first_row + int(rows[0]) * row_bytes)
        else:
            # In file order, each row straight into its place in the batch.
            for destination in np.argsort(rows, kind="stable"):
                _read_exactly(descriptor, memoryview(batch[destination]).cast("B"),
                              first_row + int(rows[destination]) * row_bytes)
    finally:
        os.close(descriptor)
    return batch


def _read_exactly(descriptor: int, buffer: memoryview, offset: int) -> None:
    """Fill ``buffer`` from ``offset`` of the file, however many reads it takes."""
    done = 0
    while done < len(buffer):
        count = os.preadv(descriptor, [buffer[done:]], offset + done)
        if count == 0:
            raise OSError(f"{offset + done}: unexpected end of the cache file (rebuild the cache)")
        done += count
