"""The one image decoder: every radiograph the project reads goes through ``load_image``.

The index's image check, the exploration samples, the preprocessing cache, Grad-CAM and
``predict`` all decode with this module, so a file is read the same way wherever it appears.

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
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
JPEG_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")
# Keep 8/16-bit depth and colour as stored; the alpha channel of RGBA files is ignored.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
# A JPEG may carry a few padding bytes after its end marker; look this far back for it.
_JPEG_TAIL_BYTES = 64
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
    """Read a PNG or JPEG (8/16-bit, grey/RGB/RGBA, truncated JPEGs included) as 8-bit grey (H, W).

    Colour is converted with OpenCV's luminance weights. 16-bit (and floating-point) images are
    stretched from their own minimum-maximum range to 0..255, because X-ray detectors rarely use
    the full 16-bit range (a plain division by 257 would leave a 12-bit image almost black).
    A JPEG without its end marker is completed and decoded (see the module docstring). The bytes
    are read with NumPy, so paths with non-ASCII characters work on every platform. A missing,
    empty or undecodable file raises ``ImageReadError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found: check the path")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"{error.strerror or error}: check the file's permissions") from None
    if data.size == 0:
        raise ImageReadError(path, "the file is empty: replace it with a valid PNG or JPEG")
    if _is_truncated_buffer(data):
        # libjpeg decodes what is there once the end marker is supplied; the rest comes out grey.
        data = np.concatenate([data, np.frombuffer(_JPEG_END, dtype=np.uint8)])
    try:
        image = cv2.imdecode(data, _DECODE_FLAGS)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise ImageReadError(path, "not a decodable PNG or JPEG image: replace or remove the file")
    return to_grey_uint8(image)


def decode_notes(path: str | os.PathLike[str]) -> list[str]:
    """What a reader should know about how ``path`` was decoded (empty for a sound file)."""
    return [TRUNCATED_NOTE] if is_truncated_jpeg(path) else []


def to_grey_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a decoded image of any depth and channel count to 8-bit greyscale (H, W)."""
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
    # Deeper images (16-bit, float) are stretched from their own range to 0..255.
    values = image.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def try_load_image(path: str | os.PathLike[str]) -> np.ndarray | None:
    """``load_image``, or None when the file cannot be read (for bulk checks)."""
    try:
        return load_image(path)
    except ImageReadError:
        return None
