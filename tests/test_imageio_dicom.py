"""DICOM decoding and the percentile window for deep images (``fracture_lib.imageio``, ``.dicom``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_fixtures import PHI_MARKERS, dicom_dataset, ramp, save, voi_lut_sequence, write_dicom
from pydicom.uid import JPEG2000Lossless, RLELossless

from fracture_lib import dicom, imageio
from fracture_lib.errors import ImageReadError
from fracture_lib.imageio import load_image


def _gradient(height: int = 60, width: int = 90) -> np.ndarray:
    """An 8-bit grey ramp with a bright bar."""
    image = np.tile(np.linspace(0, 200, width, dtype=np.uint8), (height, 1))
    image[20:40, 30:40] = 255
    return image


def _with_extremes(pixels: np.ndarray, low: int, high: int) -> np.ndarray:
    """``pixels`` with its first rows at ``low`` and last rows at ``high``.

    Over 0.5% of the pixels sit at each end, so the percentile window is exactly low..high.
    """
    pixels = pixels.copy()
    pixels[:2] = low
    pixels[-2:] = high
    return pixels


def _refused(path: Path) -> str:
    """The message of the ``ImageReadError`` that loading ``path`` raises; checks it is PHI-free."""
    with pytest.raises(ImageReadError) as caught:
        load_image(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    for marker in PHI_MARKERS:
        assert marker not in message
    return message


# Percentile window for 16-bit and float images.

def test_one_hot_pixel_does_not_flatten_16_bit_contrast(tmp_path: Path) -> None:
    deep = np.tile(np.linspace(1000, 2000, 100).round().astype(np.uint16), (50, 1))
    deep[10, 10] = 65535
    assert cv2.imwrite(str(tmp_path / "hot.png"), deep)
    image = load_image(tmp_path / "hot.png")
    assert image.min() == 0 and image.max() == 255
    # The ramp itself spans nearly the full range: a min/max stretch would squeeze it into 0..4.
    row = image[20]
    assert row[1] <= 5 and row[-2] >= 250 and np.all(np.diff(row.astype(int)) >= 0)


def test_constant_deep_images_give_zeros() -> None:
    assert not imageio.to_grey_uint8(np.full((8, 8), 1234, dtype=np.uint16)).any()
    assert not imageio.to_grey_uint8(np.full((8, 8), 0.25, dtype=np.float32)).any()


def test_float_images_ignore_non_finite_values() -> None:
    values = np.tile(np.linspace(0.0, 1.0, 50, dtype=np.float32), (20, 1))
    values[0, 0], values[0, 1] = np.nan, np.inf
    image = imageio.to_grey_uint8(values)
    assert image.dtype == np.uint8 and image[0, 0] == 0 and image[0, 1] == 255
    assert image[5, 0] == 0 and image[5, -1] == 255


def test_percentile_constants() -> None:
    assert (imageio.WINDOW_LOW_PERCENTILE, imageio.WINDOW_HIGH_PERCENTILE) == (0.5, 99.5)
    assert {".dcm", ".dicom"} <= set(imageio.IMAGE_SUFFIXES)


# Monochrome DICOM.

def test_16_bit_monochrome2_matches_the_same_16_bit_png(tmp_path: Path) -> None:
    deep = ramp(high=50000)
    deep[5, 5] = 65535
    assert cv2.imwrite(str(tmp_path / "deep.png"), deep)
    path = write_dicom(tmp_path / "deep.dcm", deep)
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == deep.shape
    assert np.array_equal(image, load_image(tmp_path / "deep.png"))
    assert image[20, 1] <= 5 and image[20, -2] >= 250
    assert imageio.decode_notes(path) == []


def test_12_bit_ignores_bits_above_bits_stored(tmp_path: Path) -> None:
    clean = _with_extremes(ramp(high=4000), 0, 4095)
    clean_path = write_dicom(tmp_path / "clean.dcm", clean, bits_stored=12)
    # Bits above Bits Stored may hold overlays or junk; the reader must mask them out.
    dirty = dicom_dataset(clean | np.uint16(0xA000), bits_stored=16)
    dirty.BitsStored, dirty.HighBit = 12, 11
    dirty_path = save(dirty, tmp_path / "dirty.dcm")
    image = load_image(clean_path)
    assert np.array_equal(image, load_image(dirty_path))
    expected = np.round(clean.astype(float) * 255 / 4095)
    assert np.abs(image - expected).max() <= 1


def test_monochrome1_is_inverted_to_look_like_monochrome2(tmp_path: Path) -> None:
    pixels = _with_extremes(ramp(), 0, 4095)
    mono2 = load_image(write_dicom(tmp_path / "mono2.dcm", pixels, bits_stored=12))
    mono1 = load_image(write_dicom(tmp_path / "mono1.dcm", 4095 - pixels, "MONOCHROME1", 12))
    assert np.array_equal(mono1, mono2)
    assert mono2[20, 0] == 255 - mono2[20, -1]


def test_8_bit_monochrome1_is_inverted(tmp_path: Path) -> None:
    grey = _gradient()
    image = load_image(write_dicom(tmp_path / "mono1.dcm", 255 - grey, "MONOCHROME1"))
    assert np.array_equal(image, grey)


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    # Stored 0..4095 become -4096..4094; the window is given in rescaled units.
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    path = write_dicom(tmp_path / "rescaled.dcm", stored, bits_stored=12, RescaleSlope=2,
                       RescaleIntercept=-4096, WindowCenter=0, WindowWidth=4001)
    image = load_image(path).ravel()
    # Linear window (DICOM PS3.3 C.11.2.1.2): everything at or below -2000.5 is black, above 1999.5 white.
    assert np.all(image[:1048] == 0) and image[1060] > 0
    assert image[3035] < 255 and np.all(image[3048:] == 255)
    rescaled = 2.0 * np.arange(4096) - 4096
    expected = np.clip(((rescaled + 0.5) / 4000 + 0.5) * 255, 0, 255)
    assert np.abs(image - expected).max() <= 1


def test_window_center_and_width_clip_outside_pixels(tmp_path: Path) -> None:
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    path = write_dicom(tmp_path / "window.dcm", stored, bits_stored=12, WindowCenter=2048, WindowWidth=1025)
    image = load_image(path).ravel()
    assert np.all(image[:1536] == 0) and np.all(image[2560:] == 255)
    assert 0 < image[1600] < image[2048] < image[2500] < 255
    expected = np.clip(((np.arange(4096) - 2047.5) / 1024 + 0.5) * 255, 0, 255)
    assert np.abs(image - expected).max() <= 1


def test_window_on_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    mono1 = write_dicom(tmp_path / "mono1.dcm", stored, "MONOCHROME1", 12, WindowCenter=2048, WindowWidth=1025)
    mono2 = write_dicom(tmp_path / "mono2.dcm", stored, "MONOCHROME2", 12, WindowCenter=2048, WindowWidth=1025)
    assert np.array_equal(load_image(mono1).astype(int), 255 - load_image(mono2).astype(int))


@pytest.mark.parametrize("as_bytes", [False, True])
def test_voi_lut_sequence_is_applied(tmp_path: Path, as_bytes: bool) -> None:
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    # A gamma curve over stored values 1000..3047 (2048 entries), its output 100..40000.
    table = np.round(100 + 39900 * (np.arange(2048) / 2047) ** 0.5).astype(np.uint16)
    path = write_dicom(tmp_path / "voi.dcm", stored, bits_stored=12,
                       VOILUTSequence=voi_lut_sequence(table, first=1000, as_bytes=as_bytes),
                       WindowCenter=100, WindowWidth=10)  # the LUT wins over the window
    image = load_image(path).ravel()
    assert np.all(image[:1001] == 0) and np.all(image[3047:] == 255)
    expected = np.round((table.astype(float) - 100) * 255 / 39900)
    assert np.abs(image[1000:3048] - expected).max() <= 1


def test_8_bit_voi_lut_with_many_entries(tmp_path: Path) -> None:
    # 4096 entries of 8 bits each: indices past 255 must not wrap around.
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    table = (np.arange(4096) // 16).astype(np.uint16)
    path = write_dicom(tmp_path / "voi8.dcm", stored, bits_stored=12,
                       VOILUTSequence=voi_lut_sequence(table, bits=8))
    assert np.array_equal(load_image(path).ravel(), table)


# Agreement with PNG.

@pytest.mark.parametrize("attributes", [{}, {"RescaleSlope": 1, "RescaleIntercept": 0}])
def test_8_bit_png_and_the_same_8_bit_dicom_load_identically(tmp_path: Path, attributes: dict) -> None:
    grey = _gradient()
    assert cv2.imwrite(str(tmp_path / "grey.png"), grey)
    path = write_dicom(tmp_path / "grey.dcm", cv2.imread(str(tmp_path / "grey.png"), cv2.IMREAD_UNCHANGED),
                       **attributes)
    assert np.array_equal(load_image(path), load_image(tmp_path / "grey.png"))


def test_rgb_dicom_is_converted_like_a_colour_png(tmp_path: Path) -> None:
    bgr = np.dstack([_gradient(), _gradient()[::-1], np.full((60, 90), 90, dtype=np.uint8)])
    assert cv2.imwrite(str(tmp_path / "colour.png"), bgr)
    path = write_dicom(tmp_path / "colour.dcm", np.ascontiguousarray(bgr[:, :, ::-1]), "RGB")
    assert np.array_equal(load_image(path), load_image(tmp_path / "colour.png"))


def test_dicom_suffix_is_case_insensitive(tmp_path: Path) -> None:
    grey = _gradient()
    assert np.array_equal(load_image(write_dicom(tmp_path / "FILM.DICOM", grey)), grey)


# Compressed transfer syntaxes.

@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_lossless_compression_decodes_like_uncompressed(tmp_path: Path, syntax: str) -> None:
    pixels = _with_extremes(ramp(), 0, 4095)
    pixels[10:20, 10:30] = 3000
    plain = write_dicom(tmp_path / "plain.dcm", pixels, bits_stored=12)
    packed = write_dicom(tmp_path / "packed.dcm", pixels, bits_stored=12, compress=syntax)
    assert plain.read_bytes() != packed.read_bytes()
    assert np.array_equal(load_image(packed), load_image(plain))


def test_missing_decoder_plugin_names_the_pip_package(tmp_path: Path, monkeypatch) -> None:
    path = write_dicom(tmp_path / "j2k.dcm", ramp(), bits_stored=12, compress=JPEG2000Lossless)

    class Unavailable:
        is_available = False

    monkeypatch.setattr(dicom, "get_decoder", lambda syntax: Unavailable())
    message = _refused(path)
    assert "JPEG 2000" in message and "pip install pylibjpeg pylibjpeg-openjpeg" in message


# Refused files.

def test_multi_frame_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "frames.dcm", np.stack([ramp()] * 3))
    message = _refused(path)
    assert ("multi-frame DICOM (3 frames) is not supported: export the frame you want as a "
            "single-frame DICOM or PNG") in message


def test_garbage_dcm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert "not a DICOM file" in _refused(path)


def test_empty_dcm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    assert "empty" in _refused(path)


def test_png_named_dcm_says_what_it_is(tmp_path: Path) -> None:
    path = tmp_path / "really-a-png.dcm"
    path.write_bytes(cv2.imencode(".png", _gradient())[1].tobytes())
    assert "it is a PNG image, rename it to .png" in _refused(path)


def test_dicom_named_png_says_what_it_is(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "really-a-dicom.png", _gradient())
    assert "rename it to .dcm" in _refused(path)


def test_truncated_pixel_data_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "cut.dcm", ramp(), bits_stored=12)
    path.write_bytes(path.read_bytes()[:-1000])
    _refused(path)


def test_garbled_header_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "garbled.dcm", ramp(), bits_stored=12)
    data = bytearray(path.read_bytes())
    data[300:340] = b"\xff" * 40  # inside the file meta, which pydicom then reads as empty
    path.write_bytes(bytes(data))
    assert "corrupt DICOM file" in _refused(path)


def test_dicom_without_pixel_data_is_refused(tmp_path: Path) -> None:
    dataset = dicom_dataset(ramp())
    del dataset.PixelData
    path = save(dataset, tmp_path / "report.dcm")
    assert "no pixel data" in _refused(path)


def test_invalid_window_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "bad-window.dcm", ramp(), bits_stored=12, WindowCenter=100, WindowWidth=0.5,
                       VOILUTFunction="SECRETFUNCTION")
    assert "invalid" in _refused(path)
