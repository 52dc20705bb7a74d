"""Image decoding across formats, letterbox geometry, CLAHE and the preprocessed cache."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from fracture_lib import preprocess
from fracture_lib.errors import ImageReadError, ParameterError
from fracture_lib.preprocess import PreprocessSettings, load_image, preprocess_image


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
