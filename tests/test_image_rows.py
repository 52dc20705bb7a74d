"""``image_rows``: row views of the cache and batches read from its file without mapping them in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fracture_lib.image_rows import ImageRows, gather_rows
from fracture_lib.pipeline import AugmentSettings, make_dataset


def _saved(tmp_path: Path, count: int = 50, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(0).integers(0, 256, (count, size, size), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    return images, np.load(tmp_path / "images.npy", mmap_mode="r")


def test_gather_rows_matches_indexing_for_every_kind_of_source(tmp_path: Path) -> None:
    images, mapped = _saved(tmp_path)
    sources = {"memory map": (mapped, images), "row slice of a map": (mapped[7:], images[7:]),
               "strided view of a map": (mapped[::3], images[::3]), "in memory": (images, images)}
    for name, (source, expected) in sources.items():
        for rows in ([4, 1, 9, 1, 0], [2, 3, 4, 5], [len(expected) - 1], []):
            batch = gather_rows(source, np.array(rows, dtype=np.int64))
            np.testing.assert_array_equal(batch, expected[rows], err_msg=f"{name}, rows {rows}")
            assert batch.flags.writeable and batch.flags.c_contiguous
    with pytest.raises(IndexError):
        gather_rows(mapped, np.array([0, 50]))
    # A view copies through the same reader.
    np.testing.assert_array_equal(np.asarray(ImageRows(mapped, [30, 2, 11])), images[[30, 2, 11]])


def _mapped_resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (Linux ``/proc/self/smaps``)."""
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:
            inside = len(fields) >= 6 and fields[-1] == str(path)
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1])
    return resident


@pytest.mark.skipif(not Path("/proc/self/smaps").exists() or not hasattr(os, "preadv"),
                    reason="needs Linux's /proc/self/smaps and os.preadv")
def test_an_epoch_over_the_map_leaves_its_pages_out_of_the_process(tmp_path: Path) -> None:
    images, mapped = _saved(tmp_path, count=64, size=128)
    labels = np.zeros(64, dtype=np.float32)
    for training, augment in ((True, AugmentSettings()), (False, None)):
        seen = [batch[0].numpy() for batch in make_dataset(mapped, labels, 16, training=training, augment=augment)]
        assert sum(len(batch) for batch in seen) == 64
    np.testing.assert_array_equal(np.concatenate(seen)[..., 0], images.astype(np.float32))
    # A split of the cache (a view) is read the same way.
    view = ImageRows(mapped, np.arange(63, -1, -2))
    seen = [batch.numpy() for batch in make_dataset(view, batch_size=8, mirror=True)]
    np.testing.assert_array_equal(np.concatenate(seen)[..., 0], images[63::-2][:, :, ::-1].astype(np.float32))
    # Every row was read, yet none of the file's pages was faulted into this process's mapping.
    assert _mapped_resident_kb((tmp_path / "images.npy").resolve()) == 0


def test_a_cache_file_cut_short_is_a_clear_error(tmp_path: Path) -> None:
    _, mapped = _saved(tmp_path)
    os.truncate(tmp_path / "images.npy", 128 + 10 * 12 * 12)
    with pytest.raises(OSError, match="unexpected end of the cache file"):
        gather_rows(mapped, np.array([20]))
