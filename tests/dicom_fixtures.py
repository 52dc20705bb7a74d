"""Small DICOM files built with pydicom for the image-decoder tests.

Every file carries made-up patient data (``PHI_MARKERS``) so tests can check that no error
message ever quotes it. UIDs are fixed, so the same call always writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

# Digital X-Ray Image Storage - For Presentation.
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
INSTANCE_UID = UID("1.2.826.0.1.3680043.8.498.1")
PATIENT_NAME = "SECRET^PATIENT"
PATIENT_ID = "SECRETID4711"
PATIENT_BIRTH_DATE = "19451231"
PHI_MARKERS = ("SECRET", PATIENT_ID, PATIENT_BIRTH_DATE)


def ramp(height: int = 40, width: int = 64, high: int = 4095) -> np.ndarray:
    """A horizontal ramp from 0 to ``high`` (uint16), the same on every row."""
    return np.tile(np.linspace(0, high, width).round().astype(np.uint16), (height, 1))


def dicom_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                  **attributes: Any) -> Dataset:
    """A DX dataset holding ``pixels``, with made-up patient data and any extra ``attributes``."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = DX_STORAGE
    dataset.SOPInstanceUID = INSTANCE_UID
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.PatientBirthDate = PATIENT_BIRTH_DATE
    dataset.Modality = "DX"
    bits = bits_stored if bits_stored is not None else pixels.dtype.itemsize * 8
    dataset.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                compress: str | None = None, **attributes: Any) -> Path:
    """Write ``pixels`` as a DICOM file at ``path`` (compressed with transfer syntax ``compress``)."""
    dataset = dicom_dataset(pixels, photometric, bits_stored, **attributes)
    if compress is not None:
        dataset.compress(compress, generate_instance_uid=False)
    save(dataset, path)
    return path


def save(dataset: Dataset, path: Path) -> Path:
    """Write ``dataset`` as a DICOM file (preamble, "DICM" marker and file meta) at ``path``."""
    dataset.save_as(path, enforce_file_format=True)
    return path


def voi_lut_sequence(table: np.ndarray, first: int = 0, bits: int = 16, as_bytes: bool = False) -> Sequence:
    """A VOI LUT Sequence with one LUT mapping ``first + i`` to ``table[i]``.

    ``as_bytes`` stores the LUT Data as little-endian OW bytes, as many real files do; otherwise
    as a US list.
    """
    item = Dataset()
    item.LUTDescriptor = [len(table) % 2**16, first, bits]
    values = np.asarray(table, dtype=np.uint16)
    if as_bytes:
        item["LUTData"] = DataElement(0x00283006, "OW", values.astype("<u2").tobytes())
    else:
        item["LUTData"] = DataElement(0x00283006, "US", [int(value) for value in values])
    return Sequence([item])
