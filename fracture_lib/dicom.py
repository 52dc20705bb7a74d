"""DICOM radiographs for ``fracture_lib.imageio.load_image`` (``.dcm`` and ``.dicom`` files).

A file is read with ``pydicom.dcmread(path, force=False)``, so it must be a DICOM file with the
"DICM" marker after its preamble; a PNG or JPEG merely named ``.dcm`` is refused with a message
saying what it really is (rename it). Its pixels become 8-bit grey the way a DICOM viewer
shows them:

1. Modality LUT, or Rescale Slope and Intercept (``apply_modality_lut``);
2. VOI LUT Sequence, else Window Center and Width (pydicom's VOI functions; a LUT wins when
   both are there, as in ``apply_voi_lut``), scaled from the transform's output range to
   0..255; without either, the same percentile window as 16-bit PNGs
   (``imageio.percentile_window``). An 8-bit file with neither and no rescale is kept as
   stored, exactly like an 8-bit PNG;
3. MONOCHROME1 is inverted, so bone is bright as in MONOCHROME2;
4. colour (RGB, YBR after pydicom's conversion to RGB, PALETTE COLOR) is converted to grey
   with the same luminance weights as colour PNGs.

Compressed transfer syntaxes are decoded by pydicom's pixel-data plugins: RLE Lossless with
NumPy alone, JPEG 2000 with pylibjpeg-openjpeg (or Pillow), baseline JPEG with Pillow, and JPEG-LS
and lossless JPEG with pylibjpeg-libjpeg. That last plugin is GPL v3, so this MIT project does not
install it: a file that needs it is refused with the `pip install` line that adds it. Multi-frame
files are refused, as are files without pixel data.

Error messages name the file by its path only and never quote a value read from the file, so
no patient data (name, ID, dates) reaches logs or reports.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.sequence import Sequence

from fracture_lib.errors import ImageReadError
from fracture_lib.imageio import display_to_uint8, percentile_window, scale_window, to_grey_uint8

_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
# The pip packages that decode each compressed transfer syntax (pydicom's pylibjpeg plugin).
PLUGIN_PACKAGES: dict[str, str] = {
    dicom_uid.JPEGBaseline8Bit: _LIBJPEG,
    dicom_uid.JPEGExtended12Bit: _LIBJPEG,
    dicom_uid.JPEGLossless: _LIBJPEG,
    dicom_uid.JPEGLosslessSV1: _LIBJPEG,
    dicom_uid.JPEGLSLossless: _LIBJPEG,
    dicom_uid.JPEGLSNearLossless: _LIBJPEG,
    dicom_uid.JPEG2000Lossless: _OPENJPEG,
    dicom_uid.JPEG2000: _OPENJPEG,
    dicom_uid.HTJ2KLossless: _OPENJPEG,
    dicom_uid.HTJ2KLosslessRPCL: _OPENJPEG,
    dicom_uid.HTJ2K: _OPENJPEG,
    dicom_uid.RLELossless: "pylibjpeg pylibjpeg-rle",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# What a file really is when it lacks the DICOM marker: its first bytes and a name.
_OTHER_FORMATS = ((b"\x89PNG\r\n\x1a\n", "a PNG image, rename it to .png"),
                  (b"\xff\xd8", "a JPEG image, rename it to .jpg"))
# What pydicom's LUT and window functions raise for attributes that are missing or inconsistent.
_ATTRIBUTE_ERRORS = (AttributeError, IndexError, KeyError, NotImplementedError, OverflowError, TypeError,
                     ValueError)
_EXPORT_HINT = "export the image as an uncompressed single-frame DICOM or PNG"


def load_dicom(path: str | Path) -> np.ndarray:
    """Read a single-frame DICOM image as 8-bit grey (H, W); see the module docstring.

    Raises ``ImageReadError`` naming ``path`` when the file is not DICOM, is corrupt, has no
    pixel data, holds several frames or needs a decoder plugin that is not installed.
    """
    path = Path(path)
    dataset = _read_dataset(path)
    _check_single_frame(dataset, path)
    pixels = _decode_pixels(dataset, path)
    try:
        return _to_grey(pixels, dataset)
    except _ATTRIBUTE_ERRORS:
        # pydicom raises these for inconsistent attributes; its messages may quote values.
        raise ImageReadError(path, "its grey-level attributes (photometric interpretation, rescale, "
                                   f"VOI LUT or window) are invalid: {_EXPORT_HINT}") from None


def _read_dataset(path: Path) -> Dataset:
    """Parse ``path`` with pydicom, turning every failure into a PHI-free ``ImageReadError``."""
    try:
        # pydicom warns about the damage it reads past; the checks below turn that into one error line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = pydicom.dcmread(path, force=False)
    except InvalidDicomError:
        raise ImageReadError(path, _not_dicom_reason(path)) from None
    except OSError as error:
        raise ImageReadError(path, f"{error.strerror or 'cannot open'}: check the file's permissions") from None
    except Exception:
        # A truncated or garbled file makes the parser fail in many ways; the cause is the same.
        raise ImageReadError(path, "corrupt DICOM file (it could not be parsed): replace the file") from None
    if len(dataset) == 0:
        # pydicom stops quietly at garbled bytes right after the file meta.
        raise ImageReadError(path, "corrupt DICOM file (no data elements could be read): replace the file")
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise ImageReadError(path, "the DICOM file has no pixel data (it is not an image, such as a report "
                                   "or a presentation state, or it is damaged): export the image itself")
    return dataset


def _not_dicom_reason(path: Path) -> str:
    """Say why a file without the DICOM marker was refused, and what it looks like instead."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        head = b""
    if not head:
        return "the file is empty: replace it with a valid DICOM image"
    for signature, description in _OTHER_FORMATS:
        if head.startswith(signature):
            return f"not a DICOM file: it is {description}"
    return "not a DICOM file (no DICM marker after the preamble): replace it with a DICOM, PNG or JPEG image"


def _check_single_frame(dataset: Dataset, path: Path) -> None:
    """Refuse multi-frame files: which frame is the radiograph is not ours to guess."""
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise ImageReadError(path, "corrupt DICOM file (invalid Number of Frames): replace the file") from None
    if frames > 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames) is not supported: export the frame "
                                   "you want as a single-frame DICOM or PNG")


def _decode_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    """The stored pixel values, decompressed by pydicom's plugins where the file is compressed."""
    _check_decoder(dataset, path)
    try:
        return dataset.pixel_array
    except Exception:
        # Decoders raise many types for damaged data, with messages that may quote tag values.
        raise ImageReadError(path, "its pixel data could not be decoded (the file is corrupt or "
                                   "truncated): replace the file") from None


def _check_decoder(dataset: Dataset, path: Path) -> None:
    """Make sure pydicom can decode the file's transfer syntax, naming the pip packages if not."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise ImageReadError(path, "corrupt DICOM file (no Transfer Syntax UID): replace the file")
    syntax = dicom_uid.UID(str(syntax))
    # Standard UIDs (under the DICOM root) have public names; others are left unquoted.
    name = syntax.name if syntax.startswith("1.2.840.10008.") else "a private transfer syntax"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(path, f"its transfer syntax ({name}) cannot be decoded by pydicom: "
                                   f"{_EXPORT_HINT}") from None
    if not decoder.is_available:
        package = PLUGIN_PACKAGES.get(syntax, f"{_LIBJPEG} pylibjpeg-openjpeg")
        raise ImageReadError(path, f"its compressed pixel data ({name}) needs a pydicom decoder plugin "
                                   f"that is not installed: pip install {package}")


def _to_grey(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Turn decoded pixel values into 8-bit grey, as the module docstring describes."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim == 3:
        # pydicom gives colour as RGB (YBR converted); OpenCV's conversion expects BGR.
        return to_grey_uint8(np.ascontiguousarray(pixels[:, :, ::-1]))
    display = _monochrome_display(pixels, dataset)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows low values bright; invert so bone is bright as in MONOCHROME2.
        display = 255.0 - display
    return display_to_uint8(display)


def _monochrome_display(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Grey levels 0..255 (float) of a monochrome image, before any MONOCHROME1 inversion."""
    values = _apply_modality(pixels, dataset)
    if _has_voi_lut(dataset):
        return _voi_lut_display(values, dataset)
    if dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None:
        return _window_display(values, dataset)
    if values.dtype == np.uint8 and int(dataset.get("BitsStored", 8)) == 8:
        # Like an 8-bit PNG, an 8-bit DICOM without a window is kept as stored.
        return values.astype(np.float32)
    return percentile_window(values)


def _apply_modality(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Apply the Modality LUT or rescale; an identity rescale (1, 0) keeps the stored dtype."""
    slope = float(dataset.get("RescaleSlope") or 1)
    intercept = float(dataset.get("RescaleIntercept") or 0)
    if not dataset.get("ModalityLUTSequence") and slope == 1 and intercept == 0:
        return pixels
    return apply_modality_lut(pixels, dataset)


def _has_voi_lut(dataset: Dataset) -> bool:
    """Whether the file has a usable VOI LUT Sequence (the test ``apply_voi_lut`` makes)."""
    sequence = dataset.get("VOILUTSequence")
    if not sequence:
        return False
    item = sequence[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _voi_lut_display(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Apply the first VOI LUT and scale its output range (its lowest to highest entry) to 0..255."""
    view = _wide_voi_view(dataset)
    entries, first, _bits = view.VOILUTSequence[0].LUTDescriptor
    last = first + (entries or 2**16) - 1
    # A VOI LUT maps integers; values past its ends take its end entries (as pydicom does).
    inputs = np.clip(np.round(values), first, last).astype(np.int64)
    table = apply_voi(np.arange(first, last + 1, dtype=np.int64), view)
    return scale_window(apply_voi(inputs, view), float(table.min()), float(table.max()))


def _wide_voi_view(dataset: Dataset) -> Dataset:
    """A dataset holding only the file's first VOI LUT, its entries declared 16-bit.

    pydicom 3.0 looks 8-bit LUTs up through uint8 indices, which wrap past 256 entries; declaring
    the entries 16-bit changes only the dtype of the result (8-bit values fit), not the mapping.
    """
    item = dataset.VOILUTSequence[0]
    entries, first, _bits = (int(value) for value in item.LUTDescriptor)
    lut = Dataset()
    lut.LUTDescriptor = [entries, first, 16]
    lut["LUTData"] = item["LUTData"]
    view = Dataset()
    view.file_meta = dataset.file_meta  # the byte order of OW-encoded LUT data
    view.VOILUTSequence = Sequence([lut])
    return view


def _window_display(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Apply the first Window Center/Width and scale the window's output range to 0..255."""
    windowed = apply_windowing(values, dataset)
    # The output range is what the window gives for the lowest and highest possible inputs.
    ends = apply_windowing(np.array([-np.inf, np.inf]), dataset)
    return scale_window(windowed, float(ends.min()), float(ends.max()))
