"""MURA v1.1: the Stanford ML Group's layout, read into the tidy index.

A MURA *data root* is the folder that contains ``MURA-v1.1/``. ``read_mura`` reads MURA's four
official CSVs (``train_image_paths.csv``, ``valid_image_paths.csv``, ``train_labeled_studies.csv``,
``valid_labeled_studies.csv``; with or without a header row) or, when they are absent, walks the
folders ``{train,valid}/XR_<PART>/patientNNNNN/studyK_{positive,negative}/imageM.png``. Both
routes give the identical table (see ``datasets.table`` for the columns):

    path          MURA-v1.1/train/XR_ELBOW/patient00011/study1_negative/image1.png
    source_split  train / valid (MURA's own split)
    body_part     elbow, finger, forearm, hand, humerus, shoulder, wrist
    patient       patient00011
    study         MURA-v1.1/train/XR_ELBOW/patient00011/study1_negative

MURA's ``valid`` split becomes ``test`` (its labels are the radiologists' reference). MURA's
``train`` split is divided into ``train`` and ``val`` **by patient** (a MURA patient can have
studies of several body parts, so the split is drawn across all parts), stratified by each
patient's body parts and labels, and computed on every part present before ``parts`` filters
the rows: a patient's split never depends on which parts were asked for. A study label that
contradicts its folder's ``_positive``/``_negative`` suffix is an error in the CSV.

Parsing uses vectorised pandas string operations: indexing the full MURA (40,005 images, every
file's existence checked by listing the folders) takes about one second.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from fracture_lib import config
from fracture_lib.datasets.table import (SourceReport, check_fraction, check_seed, check_image_files, examples,
                                         split_patients)
from fracture_lib.errors import DataLayoutError

MURA_SPLITS = ("train", "valid")
# How the index reads this source, for the exploration report.
RULES = (
    "- **Labels** per study, from `*_labeled_studies.csv` (or the `_positive`/`_negative` folder suffix); "
    "a CSV label that contradicts the folder is an error.\n"
    "- **Patients** from the `patientNNNNN` folders; a study is one `studyK_*` folder with one to four views.\n"
    "- **Split**: MURA's public `valid` set is the **test** split (labelled by radiologists, never used to "
    "train or choose settings); MURA's `train` is divided **by patient** into train and val "
    "(`val_fraction`, 12.5%), stratified by each patient's body parts and labels."
)

# MURA's official file names, inside MURA-v1.1/.
IMAGE_PATHS_CSV = "{mura_split}_image_paths.csv"
LABELED_STUDIES_CSV = "{mura_split}_labeled_studies.csv"

# One image path, relative to the data root, exactly as MURA's CSVs write it.
_IMAGE_PATH_PATTERN = (
    r"^(?P<study>MURA-v1\.1/(?P<mura_split>train|valid)/XR_(?P<part_folder>[A-Z]+)/"
    r"(?P<patient>patient\d+)/study\d+_(?P<suffix>positive|negative))/image(?P<view>\d+)\.png$"
)
_STUDY_PATTERN = r"^MURA-v1\.1/(?:train|valid)/XR_[A-Z]+/patient\d+/study\d+_(?P<suffix>positive|negative)$"
_IMAGE_FILE = re.compile(r"image\d+\.png")
_EXPECTED_LAYOUT = "MURA-v1.1/<train|valid>/XR_<PART>/patientNNNNN/studyK_<positive|negative>/imageM.png"


# ---------------------------------------------------------------------------------------------
# Reading MURA
# ---------------------------------------------------------------------------------------------


def is_mura_root(folder: Path) -> bool:
    """Tell whether ``folder`` is a MURA data root (it holds ``MURA-v1.1/``)."""
    return (folder / config.MURA_DIRNAME).is_dir()


def read_mura(root: Path, seed: int, val_fraction: float, drop_missing: bool, verify_images: bool,
              report: SourceReport) -> pd.DataFrame:
    """Index every image under ``root/MURA-v1.1`` with the patient-level split (all parts)."""
    mura_dir = _check_layout(root)

    # Read both MURA splits, by CSV where present, else from the folder names.
    frames = {mura_split: _read_mura_split(mura_dir, mura_split) for mura_split in MURA_SPLITS}
    index = pd.concat([frame for frame, _ in frames.values()], ignore_index=True)
    index = _drop_duplicate_paths(index)
    _check_patients_in_one_mura_split(index, mura_dir)
    listed_by_csv = [mura_split for mura_split, (_, from_csv) in frames.items() if from_csv]

    # The split is drawn on every part present; the caller then keeps the requested parts.
    index["split"] = assign_splits(index, seed=seed, val_fraction=val_fraction)
    # Files listed but absent (or undecodable) are reported, or dropped on request.
    return _check_files(index, root, mura_dir, listed_by_csv, drop_missing=drop_missing,
                        verify_images=verify_images, report=report)


def assign_splits(
    index: pd.DataFrame,
    seed: int = config.DEFAULT_SEED,
    val_fraction: float = config.DEFAULT_VAL_FRACTION,
) -> pd.Series:
    """Return the ``split`` column: MURA ``valid`` -> ``test``, MURA ``train`` -> ``train``/``val``.

    Patients of MURA's train split are divided by ``table.split_patients`` (strata of (body part,
    label) pairs, a systematic sample of ``val_fraction`` of them to ``val``): each stratum gets its
    share up to one patient, and all images of a patient share one split.
    """
    check_fraction("val_fraction", val_fraction)
    check_seed(seed)
    split = pd.Series(np.where(index["source_split"] == "valid", "test", "train"), index=index.index, dtype="str")
    training = index.loc[index["source_split"] == "train", ["patient", "body_part", "label"]]
    if training.empty:
        return split
    per_patient = split_patients(training, {"val": val_fraction}, seed)
    val_patients = per_patient.index[per_patient == "val"]
    split[index["patient"].isin(val_patients) & (index["source_split"] == "train")] = "val"
    return split


# ---------------------------------------------------------------------------------------------
# Layout and CSV parsing
# ---------------------------------------------------------------------------------------------


def _check_layout(root: Path) -> Path:
    """Return ``root/MURA-v1.1`` after checking it holds ``train/`` and ``valid/``."""
    mura_dir = root / config.MURA_DIRNAME
    if not root.is_dir():
        raise DataLayoutError(
            f"data root {root} does not exist: pass the folder that contains {config.MURA_DIRNAME}/ "
            "(data/ for the real MURA), or run `python -m fracture_lib demo-data` for the synthetic set"
        )
    if not mura_dir.is_dir():
        raise DataLayoutError(
            f"{root} has no {config.MURA_DIRNAME}/ folder: unzip Stanford's MURA-v1.1.zip into {root} "
            f"(so that {mura_dir}/train exists), or run `python -m fracture_lib demo-data` for the synthetic set"
        )
    absent = [name for name in MURA_SPLITS if not (mura_dir / name).is_dir()]
    if absent:
        raise DataLayoutError(
            f"{mura_dir} has no {' and no '.join(name + '/' for name in absent)} folder: "
            "MURA v1.1 holds train/ and valid/ side by side; unzip the complete MURA-v1.1.zip again"
        )
    return mura_dir


def _read_mura_split(mura_dir: Path, mura_split: str) -> tuple[pd.DataFrame, bool]:
    """Return the table of one MURA split (without ``split``) and whether a CSV listed its images."""
    images_csv = mura_dir / IMAGE_PATHS_CSV.format(mura_split=mura_split)
    if images_csv.is_file():
        paths = _read_image_paths_csv(images_csv, mura_dir.parent)
        source = images_csv.name
    else:
        paths = pd.Series(_walk_images(mura_dir, mura_split), dtype="str")
        source = f"the folders of {mura_dir / mura_split}"
    table = _parse_image_paths(paths, source)
    wrong_split = table["source_split"] != mura_split
    if wrong_split.any():
        raise DataLayoutError(
            f"{source}: {int(wrong_split.sum())} path(s) are not in MURA's {mura_split} split, "
            f"e.g. {examples(table.loc[wrong_split, 'path'])}: list only {config.MURA_DIRNAME}/{mura_split}/ images there"
        )
    labels_csv = mura_dir / LABELED_STUDIES_CSV.format(mura_split=mura_split)
    if labels_csv.is_file():
        _apply_study_labels(table, labels_csv, mura_dir.parent)
    return table, images_csv.is_file()


def _read_headerless_csv(csv_path: Path, columns: int) -> pd.DataFrame:
    """Read a headerless (or one-header-row) CSV as strings; return its first ``columns`` columns."""
    try:
        frame = pd.read_csv(csv_path, header=None, dtype=str, keep_default_na=False, skip_blank_lines=True,
                            encoding="utf-8-sig", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataLayoutError(f"{csv_path} is empty: restore MURA's original file or delete it to index from the folders") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataLayoutError(f"{csv_path} is not a readable CSV ({str(error).splitlines()[0]}): restore MURA's original file") from None
    if frame.shape[1] < columns:
        raise DataLayoutError(f"{csv_path} has {frame.shape[1]} column(s), expected {columns}: restore MURA's original file")
    frame = frame.iloc[:, :columns].apply(lambda column: column.str.strip())
    # A header row is recognised by its first cell not being a path (no slash).
    if len(frame) and "/" not in frame.iat[0, 0].replace("\\", "/"):
        frame = frame.iloc[1:]
    if frame.empty:
        raise DataLayoutError(f"{csv_path} lists nothing: restore MURA's original file or delete it to index from the folders")
    return frame.reset_index(drop=True)


def _normalise_relative_paths(paths: pd.Series, csv_path: Path, data_root: Path) -> pd.Series:
    """Use '/' separators, add a missing ``MURA-v1.1/`` prefix, and reject paths leaving the root."""
    paths = paths.str.replace("\\", "/", regex=False)
    escaping = paths.str.match(r"^(/|~|[A-Za-z]:)") | paths.str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
    if escaping.any():
        raise DataLayoutError(
            f"{csv_path}: {int(escaping.sum())} path(s) escape the data root {data_root}, e.g. {examples(paths[escaping])}: "
            f"paths must be relative to the data root and stay inside it (no '..', not absolute), like {config.MURA_DIRNAME}/train/..."
        )
    without_prefix = paths.str.match(r"^(train|valid)/")
    return paths.where(~without_prefix, config.MURA_DIRNAME + "/" + paths)


def _read_image_paths_csv(csv_path: Path, data_root: Path) -> pd.Series:
    """Read an ``*_image_paths.csv`` into a Series of relative image paths."""
    frame = _read_headerless_csv(csv_path, columns=1)
    return _normalise_relative_paths(frame.iloc[:, 0], csv_path, data_root)


def _parse_image_paths(paths: pd.Series, source: str) -> pd.DataFrame:
    """Split relative image paths into the index columns (vectorised regular expression)."""
    paths = paths.astype("str").reset_index(drop=True)
    parts = paths.str.extract(_IMAGE_PATH_PATTERN)
    malformed = parts["study"].isna()
    if malformed.any():
        raise DataLayoutError(
            f"{source}: {int(malformed.sum())} path(s) do not follow MURA's layout, e.g. {examples(paths[malformed])}: "
            f"expected {_EXPECTED_LAYOUT}"
        )
    body_part = parts["part_folder"].str.lower()
    unknown = ~body_part.isin(config.ALL_BODY_PARTS)
    if unknown.any():
        folders = sorted(set("XR_" + parts.loc[unknown, "part_folder"]))
        raise DataLayoutError(
            f"{source}: unknown body-part folder(s) {', '.join(folders)}: MURA v1.1 has "
            f"{', '.join('XR_' + part.upper() for part in config.ALL_BODY_PARTS)}; remove or rename the others"
        )
    return pd.DataFrame({
        "path": paths,
        "source_split": parts["mura_split"],
        "body_part": body_part,
        "patient": parts["patient"],
        "study": parts["study"],
        "view": parts["view"].astype("int64"),
        "label": (parts["suffix"] == "positive").astype("int64"),
    })


def _apply_study_labels(table: pd.DataFrame, labels_csv: Path, data_root: Path) -> None:
    """Check the study labels of ``labels_csv`` against the folder suffixes of ``table``'s images."""
    frame = _read_headerless_csv(labels_csv, columns=2)
    studies = _normalise_relative_paths(frame.iloc[:, 0], labels_csv, data_root).str.rstrip("/")
    suffix = studies.str.extract(_STUDY_PATTERN)["suffix"]
    if suffix.isna().any():
        raise DataLayoutError(
            f"{labels_csv}: {int(suffix.isna().sum())} study path(s) do not follow MURA's layout, "
            f"e.g. {examples(studies[suffix.isna()])}: expected {config.MURA_DIRNAME}/<train|valid>/XR_<PART>/patientNNNNN/studyK_<positive|negative>/"
        )
    labels = pd.to_numeric(frame.iloc[:, 1], errors="coerce")
    bad_label = ~labels.isin([0, 1])
    if bad_label.any():
        raise DataLayoutError(
            f"{labels_csv}: {int(bad_label.sum())} label(s) are not 0 or 1, e.g. {examples(frame.iloc[:, 1][bad_label])}: "
            "each line must read study_path/,label with label 0 (normal) or 1 (abnormal)"
        )
    labelled = pd.DataFrame({"study": studies, "label": labels.astype("int64"), "suffix": suffix})
    labelled = _unique_study_labels(labelled, labels_csv)

    # A label contradicting the folder's _positive/_negative suffix is an error in the CSV.
    contradicting = labelled["label"] != (labelled["suffix"] == "positive").astype("int64")
    if contradicting.any():
        example = labelled[contradicting].iloc[0]
        raise DataLayoutError(
            f"{labels_csv}: {int(contradicting.sum())} stud(ies) have a label that contradicts the folder name, "
            f"e.g. {example['study']}/ is labelled {example['label']}: MURA labels follow the _positive/_negative "
            "folder suffix; correct the CSV"
        )
    unlabelled = ~table["study"].isin(labelled["study"])
    if unlabelled.any():
        raise DataLayoutError(
            f"{labels_csv}: {int(unlabelled.sum())} image(s) belong to studies it does not list, "
            f"e.g. {examples(table.loc[unlabelled, 'path'])}: add the studies to the CSV, or delete it to take labels from the folder names"
        )


def _unique_study_labels(labelled: pd.DataFrame, labels_csv: Path) -> pd.DataFrame:
    """Drop repeated study rows (warning); reject a study listed with two different labels."""
    duplicated = labelled.duplicated("study", keep=False)
    if not duplicated.any():
        return labelled
    conflicting = labelled[duplicated].groupby("study")["label"].nunique()
    conflicting = conflicting[conflicting > 1]
    if not conflicting.empty:
        raise DataLayoutError(
            f"{labels_csv}: {len(conflicting)} stud(ies) are listed with both labels, e.g. {examples(conflicting.index.to_series())}: "
            "keep one line per study"
        )
    repeated = int(labelled.duplicated("study").sum())
    warnings.warn(f"{labels_csv}: ignored {repeated} repeated study line(s)", UserWarning, stacklevel=5)
    return labelled.drop_duplicates("study")


def _drop_duplicate_paths(index: pd.DataFrame) -> pd.DataFrame:
    """Keep one row per image path; warn when a CSV listed an image more than once."""
    duplicated = index["path"].duplicated()
    if duplicated.any():
        warnings.warn(
            f"ignored {int(duplicated.sum())} repeated image path(s), e.g. {examples(index.loc[duplicated, 'path'])}",
            UserWarning, stacklevel=3,
        )
        index = index[~duplicated]
    return index.reset_index(drop=True)


def _walk_images(mura_dir: Path, mura_split: str, part_folders: Iterable[str] | None = None) -> list[str]:
    """List ``imageM.png`` files under ``mura_dir/mura_split`` as paths relative to the data root.

    ``part_folders`` (e.g. ``{"XR_ELBOW"}``) limits the walk; hidden entries (``.DS_Store``,
    macOS ``._image1.png`` resource forks) are skipped.
    """
    prefix = f"{config.MURA_DIRNAME}/{mura_split}"
    wanted = None if part_folders is None else set(part_folders)
    found: list[str] = []
    for part_entry in _visible_folders(mura_dir / mura_split):
        if wanted is not None and part_entry.name not in wanted:
            continue
        for patient_entry in _visible_folders(part_entry.path):
            for study_entry in _visible_folders(patient_entry.path):
                relative = f"{prefix}/{part_entry.name}/{patient_entry.name}/{study_entry.name}/"
                with os.scandir(study_entry.path) as files:
                    found.extend(relative + entry.name for entry in files
                                 if _IMAGE_FILE.fullmatch(entry.name) and entry.is_file())
    return found


def _visible_folders(folder: str | os.PathLike[str]) -> list[os.DirEntry]:
    """Return the sub-folders of ``folder`` whose names do not start with a dot."""
    with os.scandir(folder) as entries:
        return [entry for entry in entries if not entry.name.startswith(".") and entry.is_dir()]


def _check_patients_in_one_mura_split(index: pd.DataFrame, mura_dir: Path) -> None:
    """Reject a patient whose studies are in both MURA train/ and valid/ (it would leak into test)."""
    splits_per_patient = index.groupby("patient")["source_split"].nunique()
    both = splits_per_patient[splits_per_patient > 1]
    if not both.empty:
        raise DataLayoutError(
            f"{mura_dir}: {len(both)} patient(s) have studies in both train/ and valid/, e.g. {examples(both.index.to_series())}: "
            "move all studies of a patient into one of the two folders (MURA's own split is patient-disjoint)"
        )


def _check_files(index: pd.DataFrame, root: Path, mura_dir: Path, listed_by_csv: list[str],
                 drop_missing: bool, verify_images: bool, report: SourceReport) -> pd.DataFrame:
    """Report (or drop, with a warning) listed images that are missing or cannot be decoded.

    Only the MURA splits whose images came from a CSV can list absent files; their part folders
    are walked once and compared with the table.
    """
    present: set[str] = set()
    for mura_split in listed_by_csv:
        folders = "XR_" + index.loc[index["source_split"] == mura_split, "body_part"].str.upper()
        present.update(_walk_images(mura_dir, mura_split, set(folders)))
    listed = index["source_split"].isin(listed_by_csv)
    missing = listed & ~index["path"].isin(present)
    # Only images that exist are decoded (with verify_images); the others are reported as missing.
    return check_image_files(index, root, root, drop_missing, verify_images, "restore them (unzip MURA-v1.1 again)",
                             report, missing=missing)
