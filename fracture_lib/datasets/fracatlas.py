"""FracAtlas (Abedeen et al., Scientific Data 10, 521, 2023; CC BY 4.0), read into the tidy index.

The official layout, as users download it from figshare (doi:10.6084/m9.figshare.22363012)::

    <root>/dataset.csv                 image_id, hand, leg, hip, shoulder, mixed, hardware,
                                       multiscan, fractured, fracture_count, frontal, lateral, oblique
    <root>/images/Fractured/IMG000NNNN.jpg
    <root>/images/Non_fractured/IMG000NNNN.jpg
    <root>/Annotations/COCO JSON/COCO_fracture_masks.json   (optional: fracture outlines)

The rules that turn it into the index (they are also stated in the exploration report):

- **Body part** from the one-hot columns ``hand``, ``leg``, ``hip``, ``shoulder``. A film flagged
  ``mixed`` (or with several part columns set) gets the part ``mixed``: it is indexed and
  counted, and left out of per-part training because no part model asks for it.
- **Label** from the folder (``Fractured/`` = 1). A film whose ``fractured`` flag in
  ``dataset.csv`` disagrees with its folder is reported (a warning and a note), and the folder
  wins, as MURA's folder suffix does.
- **Patients.** FracAtlas has no patient or study ids, so each film is its own study, and its own
  patient, except byte-identical films (same content hash), which are one patient, so copies
  never straddle splits. The patient key is the first image id of its group.
- **Split**, deterministic for a seed: patients stratified by body part and label, about 70% train,
  10% val and 20% test (``FRACATLAS_FRACTIONS``). ``source_split`` is empty (FracAtlas has none).
- **Truncated JPEGs** follow ``fracture_lib.imageio``'s policy (left out unless kept).
- **Fracture boxes**: ``fracture_boxes`` turns the COCO polygons into the demo set's box table
  (``path, x_min, y_min, x_max, y_max`` in the saved image's pixels, pixel centres at whole
  numbers), so the pointing game runs on real fractures.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from fracture_lib.datasets.table import BOX_COLUMNS, SourceReport, check_image_files, examples, split_patients
from fracture_lib.errors import DataLayoutError

CSV_FILENAME = "dataset.csv"
IMAGES_DIRNAME = "images"
FOLDER_LABELS = {"Fractured": 1, "Non_fractured": 0}
COCO_PATH = Path("Annotations") / "COCO JSON" / "COCO_fracture_masks.json"
PART_COLUMNS = ("hand", "leg", "hip", "shoulder")
MIXED = "mixed"
# This project's split of FracAtlas (by patient, stratified by body part and label).
FRACATLAS_FRACTIONS = {"test": 0.2, "val": 0.1}
CREDIT = ("FracAtlas: Abedeen et al., Scientific Data 10, 521 (2023), doi:10.1038/s41597-023-02432-4; "
          "data doi:10.6084/m9.figshare.22363012; CC BY 4.0")
# How the index reads this source, for the exploration report.
RULES = (
    "- **Body part** from the one-hot columns of `dataset.csv` (hand, leg, hip, shoulder); a film showing "
    "several parts is `mixed`, counted here and left out of per-part training.\n"
    "- **Label** from the folder (`images/Fractured` = 1, `images/Non_fractured` = 0); a `fractured` flag "
    "that disagrees with the folder is reported below, and the folder wins.\n"
    "- **Patients and studies**: FracAtlas has no ids, so each film is its own study and patient, except "
    "byte-identical films, which are one patient, so that copies never straddle splits. Image level and "
    "study level are the same here.\n"
    "- **Split** (this project's, deterministic for the seed): patients stratified by body part and "
    "label, about 70% train, 10% val, 20% test.\n"
    "- **Fracture outlines** (`Annotations/COCO JSON`) become boxes for the pointing game.\n"
    "- **Credit** (CC BY 4.0): " + CREDIT + "."
)


def is_fracatlas_root(folder: Path) -> bool:
    """Tell whether ``folder`` looks like FracAtlas's official layout."""
    return (folder / CSV_FILENAME).is_file() and (folder / IMAGES_DIRNAME).is_dir()


def read_fracatlas(root: Path, seed: int, drop_missing: bool, verify_images: bool, report: SourceReport) -> pd.DataFrame:
    """Index every film of a FracAtlas folder with the patient-level split (all parts)."""
    table = _read_csv(root / CSV_FILENAME)
    files = _list_films(root)
    index = _join(table, files, root, report)
    index = check_image_files(index, root, root, drop_missing, verify_images,
                              "restore them from FracAtlas's download", report)
    index = _group_identical_films(index, root, report)
    part_counts = index["body_part"].value_counts()
    report.mixed = int(part_counts.get(MIXED, 0))
    if report.mixed:
        report.note(f"{report.mixed} film(s) show several body parts: their part is '{MIXED}', indexed and counted "
                    "but left out of per-part training (no part model asks for them)")
    per_patient = split_patients(index, FRACATLAS_FRACTIONS, seed)
    index["split"] = index["patient"].map(per_patient)
    return index


def _read_csv(csv_path: Path) -> pd.DataFrame:
    """Read ``dataset.csv`` and check its columns and flags."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataLayoutError(f"{csv_path} is not a readable CSV ({str(error).splitlines()[0]}): restore FracAtlas's dataset.csv") from None
    table.columns = [column.strip().lower() for column in table.columns]
    needed = ["image_id", *PART_COLUMNS, MIXED, "fractured"]
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise DataLayoutError(f"{csv_path} lacks column(s) {', '.join(missing)}: restore FracAtlas's dataset.csv "
                              f"(it has {', '.join(needed)}, ...)")
    for column in [*PART_COLUMNS, MIXED, "fractured"]:
        values = pd.to_numeric(table[column].str.strip(), errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            rows = [str(position + 2) for position in np.flatnonzero(bad.to_numpy())]
            raise DataLayoutError(f"{csv_path}: column {column!r} holds values other than 0/1 on line(s) "
                                  f"{examples(rows)}: restore FracAtlas's dataset.csv")
        table[column] = values.astype("int64")
    table["image_id"] = table["image_id"].str.strip()
    repeated = table["image_id"].duplicated()
    if repeated.any():
        raise DataLayoutError(f"{csv_path}: image id(s) listed twice, e.g. {examples(table.loc[repeated, 'image_id'])}: "
                              "keep one line per film")
    return table


def _list_films(root: Path) -> pd.DataFrame:
    """The films in ``images/Fractured`` and ``images/Non_fractured``: image id, path, folder label."""
    rows = []
    for folder, label in FOLDER_LABELS.items():
        directory = root / IMAGES_DIRNAME / folder
        if not directory.is_dir():
            raise DataLayoutError(f"{root} has no {IMAGES_DIRNAME}/{folder}/ folder: FracAtlas keeps its films in "
                                  f"{IMAGES_DIRNAME}/Fractured/ and {IMAGES_DIRNAME}/Non_fractured/; unzip the download again")
        rows.extend({"image_id": path.name, "path": f"{IMAGES_DIRNAME}/{folder}/{path.name}", "label": label}
                    for path in sorted(directory.iterdir())
                    if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = pd.DataFrame(rows, columns=["image_id", "path", "label"])
    twice = files["image_id"].duplicated(keep=False)
    if twice.any():
        raise DataLayoutError(f"{root}: film(s) in both Fractured/ and Non_fractured/, e.g. "
                              f"{examples(files.loc[twice, 'image_id'].unique())}: keep each film in one folder")
    return files


def _body_parts(table: pd.DataFrame) -> pd.Series:
    """One body part per film: its single part column, or ``mixed`` (flagged, or several parts)."""
    flags = table[list(PART_COLUMNS)].to_numpy()
    single = flags.sum(axis=1) == 1
    names = np.array(PART_COLUMNS, dtype=object)[flags.argmax(axis=1)]
    parts = np.where(single & (table[MIXED].to_numpy() == 0), names, MIXED)
    return pd.Series(parts, index=table.index, dtype="object")


def _join(table: pd.DataFrame, files: pd.DataFrame, root: Path, report: SourceReport) -> pd.DataFrame:
    """Match the CSV's rows to the films on disk; apply the label rule and report contradictions."""
    csv_path = root / CSV_FILENAME
    table = table.assign(body_part=_body_parts(table))
    no_part = table[list(PART_COLUMNS)].sum(axis=1) == 0
    if no_part.any():
        raise DataLayoutError(f"{csv_path}: {int(no_part.sum())} film(s) have no body-part column set, e.g. "
                              f"{examples(table.loc[no_part, 'image_id'])}: set one of {', '.join(PART_COLUMNS)}")
    merged = files.merge(table[["image_id", "body_part", "fractured"]], on="image_id", how="left", indicator=True)
    unlisted = merged["_merge"] == "left_only"
    if unlisted.any():
        raise DataLayoutError(f"{csv_path} does not list {int(unlisted.sum())} film(s) found in {IMAGES_DIRNAME}/, e.g. "
                              f"{examples(merged.loc[unlisted, 'path'])}: restore FracAtlas's dataset.csv")
    not_on_disk = ~table["image_id"].isin(files["image_id"])
    if not_on_disk.any():
        report.note(f"{csv_path.name} lists {int(not_on_disk.sum())} film(s) that are in neither image folder, "
                    f"e.g. {examples(table.loc[not_on_disk, 'image_id'])}: they are left out", warn=True)
    contradicting = merged["fractured"].astype(int) != merged["label"]
    if contradicting.any():
        report.contradictions = merged.loc[contradicting, "path"].tolist()
        first = merged[contradicting].iloc[0]
        report.note(
            f"{csv_path.name}: {int(contradicting.sum())} film(s) have a 'fractured' flag that contradicts their folder, "
            f"e.g. {first['path']} is flagged {int(first['fractured'])}: the label follows the folder "
            f"(images/Fractured = 1, images/Non_fractured = 0)", warn=True)
    stems = merged["image_id"].str.rsplit(".", n=1).str[0]
    return pd.DataFrame({
        "path": merged["path"], "source_split": "", "body_part": merged["body_part"], "patient": stems,
        "study": stems, "view": 1, "label": merged["label"].astype("int64"),
    })


def _group_identical_films(index: pd.DataFrame, root: Path, report: SourceReport) -> pd.DataFrame:
    """Make byte-identical films one patient (keyed by the group's first image id)."""
    digests = index["path"].map(lambda path: hashlib.sha256((root / path).read_bytes()).hexdigest())
    groups = index.groupby(digests, sort=False)["patient"].transform("min")
    index = index.assign(patient=groups)
    repeated = digests.duplicated(keep=False)
    if repeated.any():
        grouped = index[repeated].groupby(digests[repeated], sort=False)["path"].apply(sorted)
        report.duplicate_groups = sorted(grouped.tolist())
        files = sum(len(group) for group in report.duplicate_groups)
        report.note(f"{len(report.duplicate_groups)} group(s) of byte-identical films ({files} files), e.g. "
                    f"{' = '.join(report.duplicate_groups[0])}: each group is one patient, so copies never straddle splits")
    return index


def fracture_boxes(root: Path) -> pd.DataFrame:
    """The fracture outlines of ``Annotations/COCO JSON`` as boxes (``path`` + ``BOX_COLUMNS``).

    Each polygon becomes the box of its vertices. COCO's coordinates put pixel edges at whole
    numbers; the boxes use pixel centres at whole numbers (as ``explain`` expects), so 0.5 is
    taken off. Films without outlines have no rows; with no COCO file the table is empty.
    """
    path = root / COCO_PATH
    if not path.is_file():
        return pd.DataFrame(columns=["path", *BOX_COLUMNS])
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        folders = {file.name: f"{IMAGES_DIRNAME}/{label_folder}/{file.name}" for label_folder in FOLDER_LABELS
                   for file in (root / IMAGES_DIRNAME / label_folder).glob("*")}
        names = {image["id"]: image["file_name"] for image in coco["images"]}
        rows = []
        for annotation in coco["annotations"]:
            points = np.concatenate([np.asarray(polygon, dtype=float).reshape(-1, 2)
                                     for polygon in annotation.get("segmentation") or [] if len(polygon) >= 6]
                                    or [_bbox_corners(annotation["bbox"])])
            name = names[annotation["image_id"]]
            if name not in folders:
                continue
            low, high = points.min(axis=0) - 0.5, points.max(axis=0) - 0.5
            rows.append({"path": folders[name], "x_min": float(low[0]), "y_min": float(low[1]),
                         "x_max": float(high[0]), "y_max": float(high[1])})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataLayoutError(f"{path} is not a readable COCO annotation file ({type(error).__name__}: {error}): "
                              "restore it from FracAtlas's download, or delete it to go without boxes") from None
    return pd.DataFrame(rows, columns=["path", *BOX_COLUMNS])


def _bbox_corners(bbox: list[float]) -> np.ndarray:
    """The two corners of a COCO ``[x, y, width, height]`` box."""
    x, y, width, height = (float(value) for value in bbox)
    return np.array([[x, y], [x + width, y + height]])
