"""Image decoding across formats, letterbox geometry, CLAHE and the preprocessed cache."""

from __future__ import annotations

import json
import os
import struct
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fracture_lib import preprocess
from fracture_lib.errors import ImageReadError, ParameterError
from fracture_lib.preprocess import PreprocessSettings, build_cache, load_image, preprocess_image


def _gradient(height: int = 60, width: int = 90) -> np.ndarray:
    """A grey ramp with a bright bar: easy to recognise after conversions."""
    image = np.tile(np.linspace(0, 200, width, dtype=np.uint8), (height, 1))
    image[20:40, 30:40] = 255
    return image


@pytest.mark.parametrize("name, convert", [
    ("grey8.png", lambda grey: grey),
    ("grey16.png", lambda grey: grey.astype(np.uint16) * 257),
    ("rgb.png", lambda grey: cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)),
    ("rgba.png", lambda grey: cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA)),
    ("grey.jpg", lambda grey: grey),
    ("rgb.jpg", lambda grey: cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)),
])
def test_load_image_gives_8_bit_grey(tmp_path: Path, name: str, convert) -> None:
    grey = _gradient()
    path = tmp_path / name
    assert cv2.imwrite(str(path), convert(grey))
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == grey.shape
    tolerance = 6 if name.endswith(".jpg") else 1
    assert np.abs(image.astype(int) - grey.astype(int)).mean() <= tolerance


def test_16_bit_is_windowed_to_its_own_percentiles(tmp_path: Path) -> None:
    # Four values: the 0.5 and 99.5 percentiles lie close to the extremes, which map to 0 and 255.
    deep = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    image = load_image(tmp_path / "deep.png")
    assert image.min() == 0 and image.max() == 255 and image[0, 1] == 64


def test_16_bit_colour_and_non_ascii_paths(tmp_path: Path) -> None:
    grey = _gradient()
    folder = tmp_path / "röntgen bilder"
    folder.mkdir()
    path = folder / "ellbogen-ü.png"
    colour = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR).astype(np.uint16) * 257
    # cv2.imwrite cannot write non-ASCII paths everywhere; encode to bytes and write them ourselves.
    path.write_bytes(cv2.imencode(".png", colour)[1].tobytes())
    image = load_image(path)
    stretched = np.round((grey.astype(float) - grey.min()) * 255 / (grey.max() - grey.min()))
    assert image.dtype == np.uint8 and np.abs(image - stretched).max() <= 1


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal EXIF block with the given orientation tag after the JPEG's SOI marker."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(">I", 0)
    segment = b"\xff\xe1" + struct.pack(">H", len(tiff) + 8) + b"Exif\x00\x00" + tiff
    return jpeg[:2] + segment + jpeg[2:]


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40), dtype=np.uint8)
    stored[:, :10] = 255
    path = tmp_path / "sideways.jpg"
    path.write_bytes(_with_exif_orientation(cv2.imencode(".jpg", stored)[1].tobytes(), 6))
    image = load_image(path)
    # Orientation 6 means "rotate 90 degrees clockwise to display": the bright left band goes on top.
    assert image.shape == (40, 20)
    assert image[:8].mean() > 200 and image[12:].mean() < 50


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (corrupt, text, empty, tmp_path / "missing.png"):
        with pytest.raises(ImageReadError, match=str(path.name)) as caught:
            load_image(path)
        assert "\n" not in str(caught.value)


def test_letterbox_preserves_aspect_and_centres() -> None:
    image = np.full((50, 100), 200, dtype=np.uint8)
    square = preprocess_image(image, PreprocessSettings(img_size=64))
    assert square.shape == (64, 64) and square.dtype == np.uint8
    rows = np.flatnonzero(square.max(axis=1) > 0)
    # 50x100 becomes 32x64, padded by 16 rows above and below.
    assert rows.min() == 16 and rows.max() == 47
    assert (square[:, 0] == 200).sum() == 32
    scale, top, left = preprocess.letterbox_geometry(50, 100, 64)
    assert scale == pytest.approx(0.64) and (top, left) == (16, 0)


def test_tall_images_are_centred_horizontally_and_small_ones_enlarged() -> None:
    tall = np.full((100, 40), 90, dtype=np.uint8)
    square = preprocess_image(tall, PreprocessSettings(img_size=50))
    columns = np.flatnonzero(square.max(axis=0) > 0)
    assert (columns.min(), columns.max()) == (15, 34) and (square[:, 25] == 90).all()
    small = preprocess_image(np.full((10, 20), 7, dtype=np.uint8), PreprocessSettings(img_size=40))
    assert (small[10:30] == 7).all() and (small[:10] == 0).all() and (small[30:] == 0).all()


def test_clahe_changes_the_image() -> None:
    image = _gradient(128, 128) // 3
    plain = preprocess_image(image, PreprocessSettings(img_size=128))
    equalised = preprocess_image(image, PreprocessSettings(img_size=128, clahe=True))
    assert not np.array_equal(plain, equalised)
    assert equalised.std() > plain.std()


def test_settings_validate_and_round_trip() -> None:
    settings = PreprocessSettings(img_size=96, clahe=True)
    assert PreprocessSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ParameterError, match="img_size"):
        PreprocessSettings(img_size=4)


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
    original = preprocess.load_image
    monkeypatch.setattr(preprocess, "load_image", lambda path: calls.append(path) or original(path))
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
    assert not list((tmp_path / "cache").glob("*/manifest.json"))


def test_cache_warns_about_images_predict_would_refuse(tmp_path: Path) -> None:
    # Training on a blank or tiny film is allowed, but never silent.
    good = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (80, 1))
    frame = pd.DataFrame({"path": ["good.png", "blank.png", "tiny.png"]})
    cv2.imwrite(str(tmp_path / "good.png"), good)
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((100, 100), 30, np.uint8))
    cv2.imwrite(str(tmp_path / "tiny.png"), good[:20, :20])
    settings = preprocess.PreprocessSettings(img_size=32)
    with pytest.warns(UserWarning, match=r"2 image\(s\) too small or blank to judge are in the cache, e\.g\. .*blank\.png: "
                                         r"image is blank .*--verify-images --drop-missing"):
        preprocess.build_cache(frame, tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preprocess.build_cache(frame.iloc[:1], tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
