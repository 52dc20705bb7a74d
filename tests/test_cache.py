"""The preprocessed image cache: built once, reused, memory-mapped, selected without copying."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fracture_lib import cache
from fracture_lib.cache import build_cache
from fracture_lib.image_rows import ImageRows
from fracture_lib.errors import ImageReadError, ParameterError
from fracture_lib.imageio import load_image
from fracture_lib.pipeline import make_dataset
from fracture_lib.preprocess import PreprocessSettings, preprocess_image


def _write_tree(root: Path, count: int = 6) -> pd.DataFrame:
    rows = []
    for number in range(count):
        relative = f"MURA-v1.1/train/XR_ELBOW/patient{number:05d}/study1_negative/image1.png"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((40 + number, 30), 10 * number, dtype=np.uint8))
        rows.append({"path": relative, "split": "train" if number < 4 else "val", "body_part": "elbow"})
    return pd.DataFrame(rows)


def _counting_loader(monkeypatch) -> list:
    """Patch the per-image loader the cache calls; return the list of paths it decoded."""
    calls: list = []
    original = cache.load_image
    monkeypatch.setattr(cache, "load_image", lambda path: calls.append(path) or original(path))
    return calls


def test_cache_is_built_once_and_reused(tmp_path: Path, monkeypatch) -> None:
    index = _write_tree(tmp_path)
    calls = _counting_loader(monkeypatch)
    settings = PreprocessSettings(img_size=32)
    first = build_cache(index, tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 6 and not first.reused
    assert first.images.shape == (6, 32, 32) and first.images.dtype == np.uint8
    # One array file and a manifest, published atomically (no temporary folder left behind).
    assert sorted(path.name for path in first.path.iterdir()) == ["images.npy", "manifest.json"]
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [first.path.name]
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["settings"] == settings.to_dict() and manifest["paths"] == list(index["path"])
    assert manifest["build_seconds"] > 0 and first.size_bytes == (first.path / "images.npy").stat().st_size

    second = build_cache(index, tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 6 and second.reused and second.path == first.path
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(first.images, second.images)
    for position in range(6):
        np.testing.assert_array_equal(second.images[position],
                                      preprocess_image(load_image(tmp_path / index["path"][position]), settings))
    images, frame = second.select("val")
    assert len(images) == 2 and list(frame["path"]) == list(index["path"].iloc[4:])
    np.testing.assert_array_equal(images, first.images[4:])
    with pytest.raises(ParameterError, match="split 'test'"):
        second.select("test")


def test_cache_is_rebuilt_when_settings_or_images_change(tmp_path: Path, monkeypatch) -> None:
    index = _write_tree(tmp_path)
    calls = _counting_loader(monkeypatch)
    cache_dir = tmp_path / "cache"
    settings = PreprocessSettings(img_size=32)
    build_cache(index, tmp_path, settings, cache_dir=cache_dir, progress=False)
    assert len(calls) == 6
    # Other settings: every image is decoded again.
    build_cache(index, tmp_path, PreprocessSettings(img_size=32, clahe=True), cache_dir=cache_dir, progress=False)
    assert len(calls) == 12
    # Another index (an extra image): rebuilt.
    bigger = pd.concat([index, _write_tree(tmp_path / "more", count=1).assign(
        path=lambda frame: "more/" + frame["path"])], ignore_index=True)
    build_cache(bigger, tmp_path, settings, cache_dir=cache_dir, progress=False)
    assert len(calls) == 19
    # A changed image file under the same path: rebuilt, with the new pixels.
    changed = tmp_path / index["path"][2]
    cv2.imwrite(str(changed), np.full((30, 30), 250, dtype=np.uint8))
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    cache = build_cache(index, tmp_path, settings, cache_dir=cache_dir, progress=False)
    assert len(calls) == 25 and not cache.reused and cache.images[2].max() == 250


def test_a_subset_is_sliced_from_a_larger_cache(tmp_path: Path, monkeypatch) -> None:
    index = _write_tree(tmp_path)
    calls = _counting_loader(monkeypatch)
    settings = PreprocessSettings(img_size=32)
    everything = build_cache(index, tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
    # One body part, a new split or another row order need no decoding: labels don't change pixels.
    subset = index.iloc[[5, 1, 3]].assign(split="test")
    part = build_cache(subset, tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 6 and part.reused
    np.testing.assert_array_equal(part.images, everything.images[[5, 1, 3]])
    assert list(part.index["path"]) == list(subset["path"]) and list(part.index.index) == [0, 1, 2]
    assert len(part.select("test")[0]) == 3


def test_cache_build_names_a_broken_image(tmp_path: Path) -> None:
    index = _write_tree(tmp_path, count=3)
    (tmp_path / index["path"][1]).write_text("broken")
    with pytest.raises(ImageReadError, match="patient00001"):
        build_cache(index, tmp_path, PreprocessSettings(img_size=32), cache_dir=tmp_path / "cache", progress=False)
    # Neither a cache nor its half-written temporary folder is left.
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_warns_about_images_predict_would_refuse(tmp_path: Path) -> None:
    # Training on a blank or tiny film is allowed, but never silent.
    good = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (80, 1))
    frame = pd.DataFrame({"path": ["good.png", "blank.png", "tiny.png"]})
    cv2.imwrite(str(tmp_path / "good.png"), good)
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((100, 100), 30, np.uint8))
    cv2.imwrite(str(tmp_path / "tiny.png"), good[:20, :20])
    settings = PreprocessSettings(img_size=32)
    with pytest.warns(UserWarning, match=r"2 image\(s\) too small or blank to judge are in the cache, e\.g\. .*blank\.png: "
                                         r"image is blank .*--verify-images --drop-missing"):
        build_cache(frame, tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_cache(frame.iloc[:1], tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)


def test_a_fresh_cache_is_memory_mapped_and_splits_are_views(tmp_path: Path) -> None:
    index = _write_tree(tmp_path)
    index["split"] = ["train", "val", "train", "val", "train", "train"]
    built = build_cache(index, tmp_path, PreprocessSettings(img_size=32), cache_dir=tmp_path / "cache", progress=False)
    # The images were decoded into the cache file and are read back from it, not held in memory.
    assert isinstance(built.images, np.memmap) and not built.images.flags.writeable
    train, rows = built.select("train")
    assert isinstance(train, ImageRows) and train.source is built.images
    assert list(train.positions) == [0, 2, 4, 5] and list(rows["path"]) == list(index["path"].iloc[[0, 2, 4, 5]])
    assert len(train) == 4 and train.shape == (4, 32, 32) and train.dtype == np.uint8 and train.ndim == 3
    expected = np.asarray(built.images)[[0, 2, 4, 5]]
    np.testing.assert_array_equal(np.asarray(train), expected)
    # Indexing gives a row, or a smaller view of the same array.
    np.testing.assert_array_equal(train[1], expected[1])
    assert isinstance(train[1:3], ImageRows) and train[1:3].source is built.images
    np.testing.assert_array_equal(np.asarray(train[np.array([3, 0])]), expected[[3, 0]])
    np.testing.assert_array_equal(train[:, :, ::-1], expected[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(train[1:], dtype=np.float32), expected[1:].astype(np.float32))
    # A split of a view maps back to the big array's rows.
    part = build_cache(index.iloc[[5, 4, 0]].assign(split=["train", "val", "train"]), tmp_path,
                       PreprocessSettings(img_size=32), cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(part.images, ImageRows) and part.images.source.filename == built.images.filename
    part_train, _ = part.select("train")
    assert list(part_train.positions) == [5, 0]
    np.testing.assert_array_equal(np.asarray(part_train), expected[[3, 0]])
    with pytest.raises(ParameterError, match="positions must lie in 0..5"):
        ImageRows(built.images, [6])


def test_the_pipeline_reads_a_view_like_the_array_it_stands_for(tmp_path: Path) -> None:
    from fracture_lib.pipeline import AugmentSettings

    index = _write_tree(tmp_path)
    built = build_cache(index, tmp_path, PreprocessSettings(img_size=32), cache_dir=tmp_path / "cache", progress=False)
    view = ImageRows(built.images, [4, 1, 5, 2])
    copy = np.asarray(view)
    labels = np.array([1, 0, 1, 0], dtype=np.float32)
    for options in ({}, {"training": True, "augment": AugmentSettings(), "seed": 3}, {"mirror": True}):
        from_view = [batch for batch in make_dataset(view, labels, batch_size=3, **options)]
        from_copy = [batch for batch in make_dataset(copy, labels, batch_size=3, **options)]
        assert len(from_view) == len(from_copy) == 2
        for (view_images, view_labels), (copy_images, copy_labels) in zip(from_view, from_copy):
            np.testing.assert_array_equal(view_images.numpy(), copy_images.numpy())
            np.testing.assert_array_equal(view_labels.numpy(), copy_labels.numpy())
    mirrored = next(iter(make_dataset(view, batch_size=4, mirror=True))).numpy()[..., 0]
    np.testing.assert_array_equal(mirrored, copy[:, :, ::-1].astype(np.float32))


def test_a_cache_that_cannot_be_written_is_kept_in_memory(tmp_path: Path, monkeypatch) -> None:
    index = _write_tree(tmp_path)

    def no_space(descriptor: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", no_space)
    with pytest.warns(UserWarning, match="could not write the image cache .*No space left on device.*kept in memory"):
        built = build_cache(index, tmp_path, PreprocessSettings(img_size=32), cache_dir=tmp_path / "cache",
                            progress=False)
    assert not isinstance(built.images, np.memmap) and built.images.shape == (6, 32, 32)
    np.testing.assert_array_equal(built.images[0], preprocess_image(load_image(tmp_path / index["path"][0]),
                                                                    PreprocessSettings(img_size=32)))
    # Nothing half-written is left behind, so the next run decodes again (and publishes).
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    again = build_cache(index, tmp_path, PreprocessSettings(img_size=32), cache_dir=tmp_path / "cache", progress=False)
    assert not again.reused and isinstance(again.images, np.memmap)


def test_a_system_without_posix_fallocate_still_gets_a_memory_mapped_cache(tmp_path: Path, monkeypatch) -> None:
    index = _write_tree(tmp_path)
    monkeypatch.delattr(cache.os, "posix_fallocate", raising=False)  # as on macOS
    built = build_cache(index, tmp_path, PreprocessSettings(img_size=32), cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(built.images, np.memmap) and built.images.shape == (6, 32, 32)
    assert [entry.name for entry in (tmp_path / "cache").iterdir()] == [built.path.name]


def test_two_builders_of_one_cache_keep_to_their_own_staging(tmp_path: Path, monkeypatch) -> None:
    index = _write_tree(tmp_path)
    settings = PreprocessSettings(img_size=32)
    cache_root = tmp_path / "cache"
    key = cache.cache_key(index, tmp_path, settings)
    # A third process's build in progress: its staging folder must survive ours.
    foreign = cache_root / f".{key}.tmp-elsewhere"
    foreign.mkdir(parents=True)
    (foreign / "images.npy").write_bytes(b"half written")
    original_decode = cache._decode_all
    inner: list = []
    started: list = []

    def decode_while_another_process_publishes(*arguments, **options) -> None:
        original_decode(*arguments, **options)
        if not started:
            # A second builder of the same images finishes and publishes first.
            started.append(True)
            inner.append(build_cache(index, tmp_path, settings, cache_dir=cache_root, progress=False))
            inner.append((cache_root / key / "images.npy").stat().st_ino)

    monkeypatch.setattr(cache, "_decode_all", decode_while_another_process_publishes)
    outer = build_cache(index, tmp_path, settings, cache_dir=cache_root, progress=False)
    published = cache_root / key / "images.npy"
    # The later builder opened the published cache (the same file) and discarded its own copy.
    assert published.stat().st_ino == inner[1]
    assert Path(inner[0].images.filename) == published and Path(outer.images.filename) == published
    np.testing.assert_array_equal(outer.images, inner[0].images)
    assert sorted(entry.name for entry in cache_root.iterdir()) == sorted([key, foreign.name])
    assert (foreign / "images.npy").read_bytes() == b"half written"
