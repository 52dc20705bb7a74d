"""The one image decoder: every radiograph the project reads goes through ``load_image``.

The index's image check, the exploration samples, the preprocessing cache, Grad-CAM and
``predict`` all decode with this module, so a file is read the same way wherever it appears.

Formats. PNG and JPEG are decoded with OpenCV; DICOM (``.dcm``, ``.dicom``) with pydicom, in
``fracture_lib.dicom`` (Modality LUT, VOI LUT or window, MONOCHROME1 inversion; single-frame
files only). The file's suffix chooses the reader.

Grey levels. Everything comes out as 8-bit grey. 8-bit images are kept as stored. Deeper images
(16-bit, floating point, and DICOM without a window of its own) are windowed by percentiles:
values below the ``WINDOW_LOW_PERCENTILE`` and above the ``WINDOW_HIGH_PERCENTILE`` of the image
are clipped and the range between is scaled to 0..255. X-ray detectors rarely use the full
16-bit range (a plain division by 257 would leave a 12-bit image almost black), and a plain
minimum-maximum stretch lets one hot pixel flatten the contrast of the whole film. A constant
image comes out all zero.

Images nobody can judge. ``unscorable_reason`` tells an image under ``MIN_IMAGE_SIDE`` pixels a
side or a blank one (its 1st-99th percentile grey levels closer than ``BLANK_SPREAD``). ``predict``
refuses them, the data sources' image check (``verify_images``) reports or drops them, and the
preprocessing cache warns about any it is asked to train on.

Truncated JPEGs. Real sets hold JPEGs cut short by a failed copy (FracAtlas: 86 of 4,083 films
lack JPEG's end-of-image marker, most of them exactly 16 KiB long). ``cv2.imdecode`` refuses
many of them outright, while ``cv2.imread`` decodes them with the missing bottom rows filled
with mid-grey. The policy here, applied the same way everywhere:

- ``is_truncated_jpeg`` tells such a file by its missing end marker (a cheap look at its last
  bytes, no decoding);
- ``load_image`` decodes it as libjpeg does (the marker is supplied, the missing rows come out
  mid-grey) and ``decode_notes`` says so, so ``predict`` scores it with a note;
- the data sources leave truncated files out of the index by default, counted and listed in
  the index summary and the exploration report (in FracAtlas every one of them is a normal
  film, so their grey band would teach a model "grey band = normal"); ``keep_truncated=True``
  (``--keep-truncated``) keeps them, decoded as above, in the index, the cache and training.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from fracture_lib.errors import ImageReadError, ParameterError

# File types the data sources and ``predict`` read (case-insensitive).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg") + DICOM_SUFFIXES
JPEG_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")
# Deeper-than-8-bit images are clipped to these percentiles of their own values, then scaled.
WINDOW_LOW_PERCENTILE = 0.5
WINDOW_HIGH_PERCENTILE = 99.5
# Keep 8/16-bit depth and colour as stored; the alpha channel of RGBA files is ignored.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
# A JPEG may carry a few padding bytes after its end marker; look this far back for it.
_JPEG_TAIL_BYTES = 64
# A DICOM file has "DICM" after its 128-byte preamble.
_DICOM_MARKER = (128, b"DICM")
# The smallest image side judged: below it a film holds too little to read (MURA's are 100s of px).
MIN_IMAGE_SIDE = 64
# An image whose 1st-99th percentile grey levels lie closer than this is blank (near-constant).
BLANK_SPREAD = 8
# The blank check looks at an evenly strided sample of about this many pixels (fast on any size).
_BLANK_SAMPLE_PIXELS = 65536
TRUNCATED_NOTE = ("truncated JPEG (no end-of-image marker): the missing bottom rows were filled with grey "
                  "by the decoder, so the score may be unreliable")


def is_truncated_jpeg(path: str | os.PathLike[str]) -> bool:
    """Tell whether ``path`` is a JPEG whose end-of-image marker is missing (it was cut short).

    Only the file's first and last bytes are read. Files that are not JPEGs give False.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
            if head != _JPEG_START:
                return False
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _JPEG_TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return False
    return _JPEG_END not in tail


def _is_truncated_buffer(data: np.ndarray) -> bool:
    """``is_truncated_jpeg`` for bytes already in memory."""
    return bytes(data[:2]) == _JPEG_START and _JPEG_END not in bytes(data[-_JPEG_TAIL_BYTES:])


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG, JPEG or DICOM file as 8-bit grey (H, W).

    PNG and JPEG may be 8/16-bit, grey, RGB or RGBA; colour is converted with OpenCV's
    luminance weights. 8-bit images are kept as stored. 16-bit (and floating-point) images are
    windowed by percentiles: clipped to their own ``WINDOW_LOW_PERCENTILE`` and
    ``WINDOW_HIGH_PERCENTILE`` values and scaled to 0..255, so neither an unused part of the
    16-bit range nor a single hot pixel flattens the contrast; a constant image gives zeros.
    A JPEG without its end marker is completed and decoded (see the module docstring).
    ``.dcm`` and ``.dicom`` files are read by ``fracture_lib.dicom.load_dicom``: the file's own
    Modality LUT and VOI LUT or window are applied (percentiles when it has no window),
    MONOCHROME1 is inverted so bone is bright, and multi-frame files are refused.
    The bytes are read with NumPy, so paths with non-ASCII characters work on every platform.
    A missing, empty or undecodable file raises ``ImageReadError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found: check the path")
    if path.suffix.lower() in DICOM_SUFFIXES:
        # Imported here: pydicom is only loaded when a DICOM file is read.
        from fracture_lib.dicom import load_dicom
        return load_dicom(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"{error.strerror or error}: check the file's permissions") from None
    if data.size == 0:
        raise ImageReadError(path, "the file is empty: replace it with a valid PNG or JPEG")
    return _decode_png_or_jpeg(path, data)


def _decode_png_or_jpeg(path: Path, data: np.ndarray) -> np.ndarray:
    """Decode a PNG or JPEG file's bytes ``data`` to 8-bit grey."""
    if _is_truncated_buffer(data):
        # libjpeg decodes what is there once the end marker is supplied; the rest comes out grey.
        data = np.concatenate([data, np.frombuffer(_JPEG_END, dtype=np.uint8)])
    try:
        image = cv2.imdecode(data, _DECODE_FLAGS)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        offset, marker = _DICOM_MARKER
        if bytes(data[offset:offset + len(marker)]) == marker:
            raise ImageReadError(path, "this is a DICOM file, not a PNG or JPEG: rename it to .dcm")
        raise ImageReadError(path, "not a decodable PNG or JPEG image: replace or remove the file")
    return to_grey_uint8(image)


def decode_notes(path: str | os.PathLike[str]) -> list[str]:
    """What a reader should know about how ``path`` was decoded (empty for a sound file)."""
    return [TRUNCATED_NOTE] if is_truncated_jpeg(path) else []


def to_grey_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a decoded image of any depth and channel count to 8-bit greyscale (H, W).

    Colour images are taken to be in OpenCV's BGR(A) order. 8-bit images are kept as they are;
    deeper ones are windowed by percentiles (``percentile_window``).
    """
    image = np.asarray(image)
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        else:
            image = image[:, :, 0]
    if image.ndim != 2:
        raise ParameterError(f"expected a 2-D greyscale or 3-D colour image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return display_to_uint8(percentile_window(image))


def percentile_window(values: np.ndarray) -> np.ndarray:
    """Clip ``values`` to their own percentile window and scale it to 0..255 (float32).

    The window runs from the ``WINDOW_LOW_PERCENTILE`` to the ``WINDOW_HIGH_PERCENTILE`` of the
    finite values. Not-a-number pixels come out 0, infinite ones at the window's ends.
    """
    values = np.asarray(values)
    finite = values if np.issubdtype(values.dtype, np.integer) else values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = np.percentile(finite, [WINDOW_LOW_PERCENTILE, WINDOW_HIGH_PERCENTILE])
    if finite.size != values.size:
        values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    return scale_window(values, float(low), float(high))


def scale_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip ``values`` to ``low``..``high`` and scale that range to 0..255 (float32).

    An empty window (``high <= low``, such as a constant image) gives zeros, never a division
    by zero.
    """
    if not high > low:
        return np.zeros(np.shape(values), dtype=np.float32)
    clipped = np.clip(np.asarray(values, dtype=np.float32), low, high)
    return ((clipped - low) * (255.0 / (high - low))).astype(np.float32)


def display_to_uint8(display: np.ndarray) -> np.ndarray:
    """Round grey levels in 0..255 (any dtype) to an 8-bit image."""
    return np.clip(np.round(display), 0, 255).astype(np.uint8)


def unscorable_reason(image: np.ndarray) -> str | None:
    """Why a decoded uint8 image is too small or too blank to judge, or None when it is fine."""
    height, width = image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        return f"image is {width} x {height} pixels: a radiograph needs at least {MIN_IMAGE_SIDE} pixels on each side"
    step = max(1, int(np.sqrt(height * width / _BLANK_SAMPLE_PIXELS)))
    sample = np.asarray(image[::step, ::step])
    if sample.dtype == np.uint8:
        # Percentiles from the grey-level histogram: a fraction of a millisecond per film.
        cumulative = np.cumsum(np.bincount(sample.ravel(), minlength=256))
        low, high = np.searchsorted(cumulative, [0.01 * cumulative[-1], 0.99 * cumulative[-1]])
    else:
        low, high = np.percentile(sample, [1, 99])
    if high - low < BLANK_SPREAD:
        return (f"image is blank (98% of its pixels lie within {high - low:.0f} grey levels): "
                "pass a radiograph")
    return None


def check_scorable(image: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Raise ``ImageReadError`` naming ``path`` for an image too small or too blank to judge."""
    reason = unscorable_reason(image)
    if reason is not None:
        raise ImageReadError(path, reason)


def try_load_image(path: str | os.PathLike[str]) -> np.ndarray | None:
    """``load_image``, or None when the file cannot be read (for bulk checks)."""
    try:
        return load_image(path)
    except ImageReadError:
        return None
