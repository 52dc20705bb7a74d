"""The MURA v1.1 index: one tidy table of images with a patient-level train/val/test split.

A *data root* is the folder that contains ``MURA-v1.1/``. ``build_index`` reads MURA's four
official CSVs (``train_image_paths.csv``, ``valid_image_paths.csv``, ``train_labeled_studies.csv``,
``valid_labeled_studies.csv``; with or without a header row) or, when they are absent, walks the
folders ``{train,valid}/XR_<PART>/patientNNNNN/studyK_{positive,negative}/imageM.png``. Both
routes give the identical table, one row per image, sorted by ``path``:

    path        MURA-v1.1/train/XR_ELBOW/patient00011/study1_negative/image1.png
    mura_split  train / valid (MURA's own split)
    body_part   elbow, finger, forearm, hand, humerus, shoulder, wrist
    patient     patient00011
    study       MURA-v1.1/train/XR_ELBOW/patient00011/study1_negative (unique study key)
    view        1 (the image number within the study)
    label       0 (normal) / 1 (abnormal)
    split       train / val / test

MURA's ``valid`` split becomes ``test`` (its labels are the radiologists' reference). MURA's
``train`` split is divided into ``train`` and ``val`` **by patient** (a MURA patient can have
studies of several body parts, so the split is drawn across all parts), stratified by each
patient's body parts and labels, and computed on every part present before ``parts`` filters
the rows: a patient's split never depends on which parts were asked for.

Parsing uses vectorised pandas string operations: indexing the full MURA (40,005 images, every
file's existence checked by listing the folders) takes about one second.
"""

from __future__ import annotations

import hashlib
import re
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from fracture_lib import config
from fracture_lib.errors import DataLayoutError, ImageReadError, ParameterError
from fracture_lib.files import write_text_atomically

INDEX_COLUMNS = ["path", "mura_split", "body_part", "patient", "study", "view", "label", "split"]
MURA_SPLITS = ("train", "valid")
SPLITS = ("train", "val", "test")
LABEL_NAMES = {0: "negative (normal)", 1: "positive (abnormal)"}

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
# How many offending paths an error message quotes.
_EXAMPLES = 3


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def build_index(
    data_root: str | os.PathLike[str] | None,
    parts: str | Iterable[str] | None = None,
    seed: int = config.DEFAULT_SEED,
    val_fraction: float = config.DEFAULT_VAL_FRACTION,
    drop_missing: bool = False,
    verify_images: bool = False,
) -> pd.DataFrame:
    """Index the images under ``data_root/MURA-v1.1`` into one table with a patient-level split.

    ``parts=None`` keeps every body part present; otherwise a list or comma-separated string of
    parts (unknown names raise ``ParameterError``). Images listed but missing on disk (and, with
    ``verify_images``, images that cannot be decoded) raise ``DataLayoutError`` unless
    ``drop_missing`` is set, in which case they are dropped with a warning saying how many.
    """
    selected_parts = None if parts is None else config.parse_body_parts(parts)
    _check_val_fraction(val_fraction)
    _check_seed(seed)
    root = config.resolve_data_root(data_root)
    mura_dir = _check_layout(root)

    # Read both MURA splits, by CSV where present, else from the folder names.
    frames = {mura_split: _read_mura_split(mura_dir, mura_split) for mura_split in MURA_SPLITS}
    index = pd.concat([frame for frame, _ in frames.values()], ignore_index=True)
    index = _drop_duplicate_paths(index)
    _check_patients_in_one_mura_split(index, mura_dir)
    listed_by_csv = [mura_split for mura_split, (_, from_csv) in frames.items() if from_csv]

    # The split is drawn on every part present, then the requested parts are kept.
    index["split"] = assign_splits(index, seed=seed, val_fraction=val_fraction)
    if selected_parts is not None:
        index = _select_parts(index, selected_parts, mura_dir)

    # Files listed but absent (or undecodable) are reported, or dropped on request.
    index = _check_files(index, root, mura_dir, listed_by_csv, drop_missing=drop_missing, verify_images=verify_images)
    index = index.sort_values("path", kind="stable").reset_index(drop=True)[INDEX_COLUMNS]
    check_patient_disjoint(index)
    return index


def assign_splits(
    index: pd.DataFrame,
    seed: int = config.DEFAULT_SEED,
    val_fraction: float = config.DEFAULT_VAL_FRACTION,
) -> pd.Series:
    """Return the ``split`` column: MURA ``valid`` -> ``test``, MURA ``train`` -> ``train``/``val``.

    Patients of MURA's train split are grouped into strata by the set of (body part, label)
    pairs of their studies, shuffled within each stratum with ``seed``, and every
    ``1/val_fraction``-th patient of the concatenated strata goes to ``val`` (systematic
    sampling): each stratum gets its share up to one patient, and all images of a patient share
    one split.
    """
    _check_val_fraction(val_fraction)
    _check_seed(seed)
    split = pd.Series(np.where(index["mura_split"] == "valid", "test", "train"), index=index.index, dtype="str")
    training = index.loc[index["mura_split"] == "train", ["patient", "body_part", "label"]]
    if training.empty:
        return split
    strata = _patient_strata(training)
    rng = np.random.default_rng(seed)
    order = pd.DataFrame({"patient": strata.index, "stratum": strata.to_numpy(), "shuffle": rng.random(len(strata))})
    order = order.sort_values(["stratum", "shuffle"], kind="stable").reset_index(drop=True)
    # Systematic sampling with a random start: position k goes to val when k*f + start crosses
    # an integer, which spreads the val patients evenly over the sorted strata.
    start = rng.random()
    positions = np.arange(len(order)) * val_fraction + start
    to_val = np.floor(positions + val_fraction) > np.floor(positions)
    val_patients = order.loc[to_val, "patient"]
    split[index["patient"].isin(val_patients) & (index["mura_split"] == "train")] = "val"
    return split


def check_patient_disjoint(index: pd.DataFrame) -> None:
    """Raise ``DataLayoutError`` when any patient appears in more than one split."""
    splits_per_patient = index.groupby("patient", sort=True)["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if leaking.empty:
        return
    examples = []
    for patient in leaking.index[:_EXAMPLES]:
        names = sorted(index.loc[index["patient"] == patient, "split"].unique())
        examples.append(f"{patient} ({', '.join(names)})")
    raise DataLayoutError(
        f"{len(leaking)} patient(s) appear in more than one split, e.g. {'; '.join(examples)}: "
        "rebuild the index with mura.build_index so that each patient's images share one split"
    )


def summarize_index(index: pd.DataFrame) -> pd.DataFrame:
    """Count patients, studies and images per split x body part x label.

    Rows are ordered train, val, test, then by body part and label.
    """
    summary = (
        index.groupby(["split", "body_part", "label"], sort=False)
        .agg(patients=("patient", "nunique"), studies=("study", "nunique"), images=("path", "size"))
        .reset_index()
    )
    split_order = {name: position for position, name in enumerate(SPLITS)}
    part_order = {name: position for position, name in enumerate(config.ALL_BODY_PARTS)}
    summary = summary.sort_values(
        ["split", "body_part", "label"],
        key=lambda column: column.map(split_order) if column.name == "split"
        else column.map(part_order) if column.name == "body_part" else column,
    )
    summary["label"] = summary["label"].astype("int64")
    return summary.reset_index(drop=True)


def index_fingerprint(index: pd.DataFrame) -> str:
    """Return a short sha256 (16 hex digits) of the index's (path, label, split) rows.

    The rows are hashed in path order, so the fingerprint does not depend on row order.
    """
    rows = index[["path", "label", "split"]].sort_values("path", kind="stable")
    text = (rows["path"].astype(str) + "," + rows["label"].astype(str) + "," + rows["split"].astype(str)).str.cat(sep="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def save_index(index: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the index as CSV atomically (temporary name in the same folder, then rename)."""
    return write_text_atomically(Path(path).expanduser().resolve(), index[INDEX_COLUMNS].to_csv(index=False))


def load_index(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an index CSV written by ``save_index`` back with the right column types."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise DataLayoutError(f"index file {source} does not exist: write it with `python -m fracture_lib index`")
    index = pd.read_csv(source, dtype={"view": "int64", "label": "int64"}, keep_default_na=False)
    missing = [column for column in INDEX_COLUMNS if column not in index.columns]
    if missing:
        raise DataLayoutError(f"index file {source} lacks column(s) {', '.join(missing)}: rebuild it with `python -m fracture_lib index`")
    return index[INDEX_COLUMNS]


def sample_image_statistics(
    index: pd.DataFrame,
    data_root: str | os.PathLike[str],
    sample_size: int = 300,
    seed: int = config.DEFAULT_SEED,
) -> pd.DataFrame:
    """Decode a sample of images (about equal per body part) and measure them.

    Returns one row per sampled image: ``path``, ``body_part``, ``label``, ``height`` and
    ``width`` (pixels), ``mean_intensity`` (grey level 0-255) and ``histogram`` (256 pixel counts).
    """
    sample = _sample_per_part(index, sample_size, seed)
    images = _read_images(sample["path"], config.resolve_data_root(data_root))
    sample = sample[["path", "body_part", "label"]].reset_index(drop=True)
    sample["height"] = [image.shape[0] for image in images]
    sample["width"] = [image.shape[1] for image in images]
    sample["mean_intensity"] = [float(image.mean()) for image in images]
    sample["histogram"] = [np.bincount(image.ravel(), minlength=256) for image in images]
    return sample


def sample_images(
    index: pd.DataFrame,
    data_root: str | os.PathLike[str],
    per_group: int = 3,
    seed: int = config.DEFAULT_SEED,
) -> pd.DataFrame:
    """Pick up to ``per_group`` images per body part x label (each from a different study).

    Returns ``path``, ``body_part``, ``label`` and ``image`` (the uint8 (H, W) array).
    """
    if per_group < 1:
        raise ParameterError(f"per_group must be at least 1, got {per_group}")
    one_per_study = index.sample(frac=1.0, random_state=seed).drop_duplicates("study")
    sample = (
        one_per_study.groupby(["body_part", "label"], sort=True, group_keys=False)
        .head(per_group)
        .sort_values(["body_part", "label", "path"])
    )
    sample = sample[["path", "body_part", "label"]].reset_index(drop=True)
    sample["image"] = _read_images(sample["path"], config.resolve_data_root(data_root))
    return sample


# ---------------------------------------------------------------------------------------------
# Layout and CSV parsing
# ---------------------------------------------------------------------------------------------


def _check_seed(seed: int) -> None:
    """Reject a seed NumPy cannot use."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")


def _check_val_fraction(val_fraction: float) -> None:
    """Reject a validation fraction outside (0, 1)."""
    if not 0.0 < float(val_fraction) < 1.0:
        raise ParameterError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}; MURA projects use 0.1-0.15")


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
    wrong_split = table["mura_split"] != mura_split
    if wrong_split.any():
        raise DataLayoutError(
            f"{source}: {int(wrong_split.sum())} path(s) are not in MURA's {mura_split} split, "
            f"e.g. {_examples(table.loc[wrong_split, 'path'])}: list only {config.MURA_DIRNAME}/{mura_split}/ images there"
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
            f"{csv_path}: {int(escaping.sum())} path(s) escape the data root {data_root}, e.g. {_examples(paths[escaping])}: "
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
            f"{source}: {int(malformed.sum())} path(s) do not follow MURA's layout, e.g. {_examples(paths[malformed])}: "
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
        "mura_split": parts["mura_split"],
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
            f"e.g. {_examples(studies[suffix.isna()])}: expected {config.MURA_DIRNAME}/<train|valid>/XR_<PART>/patientNNNNN/studyK_<positive|negative>/"
        )
    labels = pd.to_numeric(frame.iloc[:, 1], errors="coerce")
    bad_label = ~labels.isin([0, 1])
    if bad_label.any():
        raise DataLayoutError(
            f"{labels_csv}: {int(bad_label.sum())} label(s) are not 0 or 1, e.g. {_examples(frame.iloc[:, 1][bad_label])}: "
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
            f"e.g. {_examples(table.loc[unlabelled, 'path'])}: add the studies to the CSV, or delete it to take labels from the folder names"
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
            f"{labels_csv}: {len(conflicting)} stud(ies) are listed with both labels, e.g. {_examples(conflicting.index.to_series())}: "
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
            f"ignored {int(duplicated.sum())} repeated image path(s), e.g. {_examples(index.loc[duplicated, 'path'])}",
            UserWarning, stacklevel=3,
        )
        index = index[~duplicated]
    return index.reset_index(drop=True)


def _patient_strata(training: pd.DataFrame) -> pd.Series:
    """Return each patient's stratum: an integer whose bits mark its (body part, label) pairs.

    Patients with the same set of pairs (e.g. only normal elbow studies, or an abnormal elbow and
    a normal hand) share a stratum; the bit mask keeps this a vectorised group sum.
    """
    pairs = training["body_part"] + ":" + training["label"].astype(str)
    unique = pd.DataFrame({"patient": training["patient"].to_numpy(), "pair": pairs.to_numpy()}).drop_duplicates()
    codes = pd.Categorical(unique["pair"], categories=sorted(unique["pair"].unique())).codes
    unique["bit"] = np.left_shift(np.int64(1), codes.astype(np.int64))
    return unique.groupby("patient", sort=True)["bit"].sum()


def _select_parts(index: pd.DataFrame, parts: tuple[str, ...], mura_dir: Path) -> pd.DataFrame:
    """Keep the rows of ``parts``; a requested part without images is an error."""
    present = set(index["body_part"].unique())
    absent = [part for part in parts if part not in present]
    if absent:
        raise DataLayoutError(
            f"{mura_dir} has no images of {', '.join(absent)} (present: {', '.join(sorted(present)) or 'none'}): "
            "choose parts that are present, or place the missing XR_<PART> folders"
        )
    return index[index["body_part"].isin(parts)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Files on disk
# ---------------------------------------------------------------------------------------------


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
    splits_per_patient = index.groupby("patient")["mura_split"].nunique()
    both = splits_per_patient[splits_per_patient > 1]
    if not both.empty:
        raise DataLayoutError(
            f"{mura_dir}: {len(both)} patient(s) have studies in both train/ and valid/, e.g. {_examples(both.index.to_series())}: "
            "move all studies of a patient into one of the two folders (MURA's own split is patient-disjoint)"
        )


def _check_files(index: pd.DataFrame, root: Path, mura_dir: Path, listed_by_csv: list[str],
                 drop_missing: bool, verify_images: bool) -> pd.DataFrame:
    """Report (or drop, with a warning) listed images that are missing or cannot be decoded.

    Only the MURA splits whose images came from a CSV can list absent files; their part folders
    are walked once and compared with the table.
    """
    present: set[str] = set()
    for mura_split in listed_by_csv:
        folders = "XR_" + index.loc[index["mura_split"] == mura_split, "body_part"].str.upper()
        present.update(_walk_images(mura_dir, mura_split, set(folders)))
    listed = index["mura_split"].isin(listed_by_csv)
    missing = listed & ~index["path"].isin(present)
    problems = {"missing on disk": missing}
    if verify_images:
        # Only images that exist are decoded; the others are already reported as missing.
        unreadable = pd.Series(False, index=index.index)
        candidates = index.loc[~missing, "path"]
        unreadable.loc[candidates.index] = ~np.array(_decodable(candidates, root), dtype=bool)
        problems["unreadable"] = unreadable
    problems = {name: mask for name, mask in problems.items() if mask.any()}
    if not problems:
        return index
    details = "; ".join(f"{int(mask.sum())} {name} (e.g. {_examples(index.loc[mask, 'path'])})" for name, mask in problems.items())
    if not drop_missing:
        raise DataLayoutError(
            f"of {len(index)} images listed under {root}, {details}: restore them (unzip MURA-v1.1 again) "
            "or pass drop_missing=True (--drop-missing) to skip them"
        )
    dropped = np.logical_or.reduce([mask.to_numpy() for mask in problems.values()])
    warnings.warn(f"dropped {int(dropped.sum())} of {len(index)} images listed under {root}: {details}",
                  UserWarning, stacklevel=3)
    return index[~dropped].reset_index(drop=True)


def _read_grey(path: Path) -> np.ndarray | None:
    """Decode an image as 8-bit greyscale; None when it cannot be read."""
    import cv2

    buffer = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.empty(0, dtype=np.uint8)
    if buffer.size == 0:
        return None
    return cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)


def _decodable(paths: pd.Series, root: Path) -> list[bool]:
    """Tell, per path, whether the image decodes (OpenCV releases the GIL, so threads help)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return [image is not None for image in pool.map(_read_grey, (root / path for path in paths))]


def _read_images(paths: pd.Series, root: Path) -> list[np.ndarray]:
    """Decode images as uint8 (H, W) arrays; raise ``ImageReadError`` for the first that fails."""
    full_paths = [root / path for path in paths]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_read_grey, full_paths))
    for path, image in zip(full_paths, images):
        if image is None:
            raise ImageReadError(path, "missing or not a decodable image; rebuild the index with verify_images=True, drop_missing=True")
    return images


def _sample_per_part(index: pd.DataFrame, sample_size: int, seed: int) -> pd.DataFrame:
    """Sample up to ``sample_size`` rows, about equally many per body part."""
    if sample_size < 1:
        raise ParameterError(f"sample_size must be at least 1, got {sample_size}")
    parts = sorted(index["body_part"].unique())
    per_part = max(1, sample_size // max(1, len(parts)))
    pieces = []
    for part in parts:
        rows = index[index["body_part"] == part]
        pieces.append(rows.sample(n=min(per_part, len(rows)), random_state=seed))
    return pd.concat(pieces).sort_values("path") if pieces else index.iloc[:0]


def _examples(values: pd.Series) -> str:
    """Quote the first few offending values for an error message."""
    shown = [str(value) for value in values.iloc[:_EXAMPLES]]
    more = "" if len(values) <= _EXAMPLES else ", ..."
    return ", ".join(shown) + more
