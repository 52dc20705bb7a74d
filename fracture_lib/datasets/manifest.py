"""A manifest CSV: any labelled set of radiographs, listed one image per row.

Columns (a header row is required; other columns are ignored)::

    path       required: the image file, relative to the CSV's folder (no '..', not absolute)
    label      required: 0/1, normal/abnormal, negative/positive (case-insensitive)
    body_part  optional: e.g. hand, elbow, leg (lower-cased); missing means 'unspecified'
    patient    optional: missing means each study is its own patient (each image, without studies)
    study      optional: missing means one study per image
    split      optional: train, val or test; missing (or blank) rows are divided into train and val
               by patient, as MURA's training set is (``val_fraction``)

Example (``my_set/manifest.csv``, images beside it)::

    path,label,body_part,patient,study,split
    p001/s1/frontal.png,1,hand,p001,p001-s1,test
    p001/s1/lateral.png,1,hand,p001,p001-s1,test
    p002/s1/frontal.png,normal,hand,p002,p002-s1,

Every value is checked, and a bad one stops the index with a one-line error naming the CSV line
and the fix: an unknown label, a path escaping the CSV's folder, a missing file, a duplicate path,
a study with two labels, a study under two patients, an unknown split, a patient in two splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fracture_lib import config, imageio
from fracture_lib.datasets.table import SPLITS, SourceReport, check_fraction, check_image_files, examples, split_patients
from fracture_lib.errors import DataLayoutError

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("body_part", "patient", "study", "split")
UNSPECIFIED_PART = "unspecified"
# How the index reads this source, for the exploration report.
RULES = (
    "- **One row per image**: `path` (relative to the CSV's folder) and `label` (0/1, normal/abnormal, "
    "negative/positive); optional `body_part`, `patient`, `study`, `split`.\n"
    "- Without `study`, each image is its own study; without `patient`, each study is its own patient.\n"
    "- **Split**: the `split` column where given (train, val, test); rows without one are divided by "
    "patient into train and val (`val_fraction`), as MURA's training set is."
)
LABEL_VALUES = {"0": 0, "1": 1, "normal": 0, "abnormal": 1, "negative": 0, "positive": 1,
                "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def is_manifest(path: Path) -> bool:
    """Tell whether ``path`` names a manifest (a ``.csv`` file)."""
    return path.suffix.lower() == ".csv" and path.is_file()


def read_manifest(csv_path: Path, seed: int, val_fraction: float, drop_missing: bool, verify_images: bool,
                  report: SourceReport) -> pd.DataFrame:
    """Index the images a manifest lists (paths relative to its folder) with the patient-level split."""
    check_fraction("val_fraction", val_fraction)
    table = _read(csv_path)
    root = csv_path.parent
    lines = pd.Series(np.arange(len(table)) + 2, index=table.index)  # the header is line 1

    paths = _check_paths(table["path"], lines, csv_path)
    labels = _check_labels(table["label"], lines, csv_path)
    parts = _column(table, "body_part").map(lambda value: config.normalise_body_part(value) if value else UNSPECIFIED_PART)
    bad_part = ~parts.map(lambda name: bool(config.BODY_PART_PATTERN.fullmatch(name)))
    if bad_part.any():
        _fail(csv_path, lines[bad_part], f"body part {table.loc[bad_part, 'body_part'].iloc[0]!r} is not a plain name",
              "write a lower-case name such as hand, elbow or leg")
    study = _column(table, "study")
    patient = _column(table, "patient")
    # Without a study, each image is one; without a patient, each study is its own patient.
    study = study.where(study != "", paths)
    patient = patient.where(patient != "", study)
    index = pd.DataFrame({"path": paths, "body_part": parts, "patient": patient, "study": study, "label": labels})
    _check_studies(index, lines, csv_path)
    index["source_split"] = _check_splits(_column(table, "split"), lines, csv_path)
    index["view"] = index.groupby("study")["path"].rank(method="first").astype("int64")

    index = _check_files(index, root, lines, csv_path, drop_missing, verify_images, report)
    index["split"] = _assign_splits(index, seed, val_fraction)
    return index


def _read(csv_path: Path) -> pd.DataFrame:
    """Read the manifest as strings and check its header."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataLayoutError(f"{csv_path} is empty: a manifest needs a header row 'path,label' and one row per image") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataLayoutError(f"{csv_path} is not a readable CSV ({str(error).splitlines()[0]}): "
                              "save it as UTF-8 CSV with a header row 'path,label'") from None
    table.columns = [str(column).strip().lower() for column in table.columns]
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise DataLayoutError(f"{csv_path} has no {' and no '.join(repr(column) for column in missing)} column "
                              f"(it has {', '.join(table.columns) or 'none'}): a manifest's header names path,label "
                              f"and optionally {', '.join(OPTIONAL_COLUMNS)}")
    if table.empty:
        raise DataLayoutError(f"{csv_path} lists no images: add one row per image under its header")
    return table.apply(lambda column: column.str.strip())


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    """An optional column's values (empty strings when the column is absent)."""
    return table[name] if name in table.columns else pd.Series("", index=table.index, dtype="object")


def _fail(csv_path: Path, lines: pd.Series, problem: str, fix: str) -> None:
    """Raise the one-line error for the rows at ``lines``."""
    where = f"line {lines.iloc[0]}" if len(lines) == 1 else f"{len(lines)} rows, e.g. line(s) {examples(lines)}"
    raise DataLayoutError(f"{csv_path}, {where}: {problem}: {fix}")


def _check_paths(paths: pd.Series, lines: pd.Series, csv_path: Path) -> pd.Series:
    """Normalise separators; reject empty, escaping, duplicate and unsupported paths."""
    paths = paths.str.replace("\\", "/", regex=False).str.removeprefix("./")
    empty = paths == ""
    if empty.any():
        _fail(csv_path, lines[empty], "the path is empty", "give each row its image file")
    escaping = paths.str.match(r"^(/|~|[A-Za-z]:)") | paths.str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
    if escaping.any():
        _fail(csv_path, lines[escaping], f"path {paths[escaping].iloc[0]!r} escapes the manifest's folder {csv_path.parent}",
              "give paths relative to the CSV's folder that stay inside it (no '..', not absolute); move the CSV up if needed")
    suffixes = paths.str.lower().str.extract(r"(\.[a-z0-9]+)$")[0].fillna("")
    unsupported = ~suffixes.isin(imageio.IMAGE_SUFFIXES)
    if unsupported.any():
        _fail(csv_path, lines[unsupported], f"{paths[unsupported].iloc[0]!r} is not a PNG or JPEG file",
              f"list {', '.join(imageio.IMAGE_SUFFIXES)} images (convert others to PNG)")
    duplicated = paths.duplicated(keep="first")
    if duplicated.any():
        first = paths[duplicated].iloc[0]
        earlier = lines[paths == first].iloc[0]
        _fail(csv_path, lines[duplicated], f"path {first!r} is listed again (first on line {earlier})",
              "list each image once")
    return paths


def _check_labels(values: pd.Series, lines: pd.Series, csv_path: Path) -> pd.Series:
    """Map label values to 0/1; an unknown value is an error."""
    labels = values.str.lower().map(LABEL_VALUES)
    unknown = labels.isna()
    if unknown.any():
        _fail(csv_path, lines[unknown], f"label {values[unknown].iloc[0]!r} is not a known label",
              "write 0 or 1 (also normal/abnormal, negative/positive)")
    return labels.astype("int64")


def _check_studies(index: pd.DataFrame, lines: pd.Series, csv_path: Path) -> None:
    """Reject a study with two labels or under two patients (a study is one patient's examination)."""
    for column, problem in (("label", "has two labels"), ("patient", "is listed under two patients")):
        counts = index.groupby("study")[column].transform("nunique")
        clash = counts > 1
        if clash.any():
            study = index.loc[clash, "study"].iloc[0]
            rows = lines[index["study"] == study]
            values = ", ".join(str(value) for value in sorted(index.loc[index["study"] == study, column].unique()))
            _fail(csv_path, rows, f"study {study!r} {problem} ({values})",
                  "give every image of a study the same " + column)


def _check_splits(values: pd.Series, lines: pd.Series, csv_path: Path) -> pd.Series:
    """Lower-case split names; only train, val, test or blank are allowed."""
    splits = values.str.lower()
    unknown = ~splits.isin(("", *SPLITS))
    if unknown.any():
        _fail(csv_path, lines[unknown], f"split {values[unknown].iloc[0]!r} is unknown",
              "write train, val or test, or leave it blank to let the index split by patient")
    return splits


def _check_files(index: pd.DataFrame, root: Path, lines: pd.Series, csv_path: Path, drop_missing: bool,
                 verify_images: bool, report: SourceReport) -> pd.DataFrame:
    """Missing (or, with ``verify_images``, undecodable) files: an error naming the line, or dropped."""
    missing = ~index["path"].map(lambda path: (root / path).is_file())
    if missing.any() and not drop_missing:
        _fail(csv_path, lines[missing], f"image {index.loc[missing, 'path'].iloc[0]!r} does not exist in {root}",
              "fix the path, or pass --drop-missing (drop_missing=True) to skip missing images")
    return check_image_files(index, root, csv_path, drop_missing, verify_images,
                             "fix the files or remove their rows", report)


def _assign_splits(index: pd.DataFrame, seed: int, val_fraction: float) -> pd.Series:
    """Keep the given splits; rows without one are divided into train and val by patient."""
    split = index["source_split"].copy()
    # A patient's blank rows follow the split given on its other rows.
    given = split[split != ""].groupby(index["patient"]).first()
    split = split.where(split != "", index["patient"].map(given).astype("object").fillna(""))
    open_rows = split == ""
    if open_rows.any():
        per_patient = split_patients(index.loc[open_rows, ["patient", "body_part", "label"]], {"val": val_fraction}, seed)
        split[open_rows] = index.loc[open_rows, "patient"].map(per_patient)
    return split
