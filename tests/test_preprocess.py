"""Image decoding across formats, letterbox geometry, CLAHE and the preprocessed cache."""

from __future__ import annotations

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


def test_16_bit_is_stretched_from_its_own_range(tmp_path: Path) -> None:
    deep = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    image = load_image(tmp_path / "deep.png")
    assert image.min() == 0 and image.max() == 255 and image[0, 1] == 64


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


def test_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch) -> None:
    index = _write_tree(tmp_path)
    calls = []
    original = preprocess.load_and_preprocess
    monkeypatch.setattr(preprocess, "load_and_preprocess",
                        lambda path, settings: calls.append(path) or original(path, settings))
    settings = PreprocessSettings(img_size=32)
    first = build_cache(index, tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 6 and not first.reused
    assert first.images.shape == (6, 32, 32)
    second = build_cache(index, tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 6 and second.reused
    np.testing.assert_array_equal(first.images, second.images)
    # Other settings or another index rebuild the cache.
    build_cache(index, tmp_path, PreprocessSettings(img_size=32, clahe=True), cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 12
    build_cache(index.iloc[:5], tmp_path, settings, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 17
    images, frame = second.select("val")
    assert len(images) == 2 and list(frame["path"]) == list(index["path"].iloc[4:])
    np.testing.assert_array_equal(images[0], preprocess_image(load_image(tmp_path / index["path"][4]), settings))
    with pytest.raises(ParameterError, match="split 'test'"):
        second.select("test")


def test_cache_build_names_a_broken_image(tmp_path: Path) -> None:
    index = _write_tree(tmp_path, count=3)
    (tmp_path / index["path"][1]).write_text("broken")
    with pytest.raises(ImageReadError, match="patient00001"):
        build_cache(index, tmp_path, PreprocessSettings(img_size=32), cache_dir=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*/manifest.json"))
