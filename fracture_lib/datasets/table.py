"""The tidy index every data source produces, its patient-level split, checks and summaries.

One row per image, sorted by ``path``::

    path          image path relative to the source's root (posix separators)
    source_split  the split the source itself defines: MURA's train/valid, a manifest's
                  split column as given; empty when the source has none (FracAtlas)
    body_part     lower-case: elbow, hand, ... (MURA), leg, hip, mixed (FracAtlas), ...
    patient       patient key (a film's own id when the source has no patients)
    study         unique study key (all views of one examination share it)
    view          the image number within its study (1, 2, ...)
    label         0 (normal) / 1 (abnormal)
    split         train / val / test (this project's split, always by patient)
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from fracture_lib import config, imageio
from fracture_lib.errors import DataLayoutError, ImageReadError, ParameterError
from fracture_lib.files import write_text_atomically

INDEX_COLUMNS = ["path", "source_split", "body_part", "patient", "study", "view", "label", "split"]
SPLITS = ("train", "val", "test")
# A fracture box: pixels of the saved image, pixel centres at whole numbers (demo set, FracAtlas).
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
LABEL_NAMES = {0: "negative (normal)", 1: "positive (abnormal)"}
# How many offending values an error message or a note quotes.
EXAMPLES = 3


@dataclass
class SourceReport:
    """What reading a source found besides the index: the quirks a reader must hear about.

    ``notes`` are one-line sentences for the index summary and the exploration report; the
    other fields hold the same facts as data (paths, groups, counts).
    """

    kind: str
    notes: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    truncated_kept: bool = False
    duplicate_groups: list[list[str]] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    mixed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def note(self, text: str, warn: bool = False) -> None:
        """Record a note; with ``warn`` also issue it as a ``UserWarning``."""
        self.notes.append(text)
        if warn:
            warnings.warn(text, UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def check_seed(seed: int) -> None:
    """Reject a seed NumPy cannot use."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")


def check_fraction(name: str, value: float) -> None:
    """Reject a split fraction outside (0, 1)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 < number < 1.0:
        raise ParameterError(f"{name} must be between 0 and 1 (exclusive), got {value}; MURA projects use 0.1-0.15")


# ---------------------------------------------------------------------------------------------
# The patient-level split
# ---------------------------------------------------------------------------------------------


def patient_strata(rows: pd.DataFrame) -> pd.Series:
    """Return each patient's stratum: an integer whose bits mark its (body part, label) pairs.

    Patients with the same set of pairs (e.g. only normal elbow studies, or an abnormal elbow and
    a normal hand) share a stratum; the bit mask keeps this a vectorised group sum.
    """
    pairs = rows["body_part"].astype(str) + ":" + rows["label"].astype(str)
    unique = pd.DataFrame({"patient": rows["patient"].to_numpy(), "pair": pairs.to_numpy()}).drop_duplicates()
    codes = pd.Categorical(unique["pair"], categories=sorted(unique["pair"].unique())).codes
    unique["bit"] = np.left_shift(np.int64(1), codes.astype(np.int64))
    return unique.groupby("patient", sort=True)["bit"].sum()


def _systematic(count: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mark about ``fraction`` of ``count`` ordered positions, evenly spread, with a random start.

    Position k is marked when k*f + start crosses an integer, so every run of consecutive
    positions (a stratum) gets its share up to one.
    """
    start = rng.random()
    positions = np.arange(count) * fraction + start
    return np.floor(positions + fraction) > np.floor(positions)


def split_patients(rows: pd.DataFrame, fractions: Mapping[str, float], seed: int) -> pd.Series:
    """Assign every patient of ``rows`` to ``train`` or one of the splits in ``fractions``.

    ``fractions`` maps split names to shares of the patients, e.g. ``{"val": 0.125}`` or
    ``{"test": 0.2, "val": 0.1}``; the rest goes to ``train``. Patients are grouped into strata
    by the set of (body part, label) pairs of their images, shuffled within each stratum with
    ``seed``, and each split in turn takes an evenly spread systematic sample of the patients
    still unassigned, so each stratum gets its share up to one patient. Returns the split per
    patient (a Series indexed by patient).
    """
    check_seed(seed)
    strata = patient_strata(rows)
    rng = np.random.default_rng(seed)
    order = pd.DataFrame({"patient": strata.index, "stratum": strata.to_numpy(), "shuffle": rng.random(len(strata))})
    order = order.sort_values(["stratum", "shuffle"], kind="stable").reset_index(drop=True)
    assigned = pd.Series("train", index=order["patient"].to_numpy(), dtype="object")
    remaining = np.ones(len(order), dtype=bool)
    share_left = 1.0
    for split, fraction in fractions.items():
        check_fraction(f"the {split} fraction", fraction)
        # Each later split samples among the patients still unassigned, at the matching rate.
        rate = min(1.0, float(fraction) / share_left)
        candidates = np.flatnonzero(remaining)
        chosen = candidates[_systematic(len(candidates), rate, rng)]
        assigned.iloc[chosen] = split
        remaining[chosen] = False
        share_left -= float(fraction)
        if share_left <= 0:
            raise ParameterError(f"split fractions {dict(fractions)} leave nothing for training: keep their sum below 1")
    return assigned.sort_index()


def check_patient_disjoint(index: pd.DataFrame) -> None:
    """Raise ``DataLayoutError`` when any patient appears in more than one split."""
    splits_per_patient = index.groupby("patient", sort=True)["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if leaking.empty:
        return
    examples = []
    for patient in leaking.index[:EXAMPLES]:
        names = sorted(index.loc[index["patient"] == patient, "split"].unique())
        examples.append(f"{patient} ({', '.join(names)})")
    raise DataLayoutError(
        f"{len(leaking)} patient(s) appear in more than one split, e.g. {'; '.join(examples)}: "
        "give all images of a patient one split (or rebuild the index with datasets.build_index)"
    )


def select_parts(index: pd.DataFrame, parts: tuple[str, ...], where: object) -> pd.DataFrame:
    """Keep the rows of ``parts``; a requested part without images is an error."""
    present = set(index["body_part"].unique())
    absent = [part for part in parts if part not in present]
    if absent:
        raise DataLayoutError(
            f"{where} has no images of {', '.join(absent)} (present: {', '.join(sort_parts(present)) or 'none'}): "
            "choose parts that are present (--parts)"
        )
    return index[index["body_part"].isin(parts)].reset_index(drop=True)


def sort_parts(parts: Iterable[str]) -> list[str]:
    """Body parts in MURA's order first, then the others alphabetically."""
    known = {name: position for position, name in enumerate(config.ALL_BODY_PARTS)}
    return sorted(set(parts), key=lambda name: (known.get(name, len(known)), name))


# ---------------------------------------------------------------------------------------------
# Files on disk
# ---------------------------------------------------------------------------------------------


def _image_problem(path: Path) -> str | None:
    """What keeps one image out of an index: unreadable, too small or blank; None when fine."""
    image = imageio.try_load_image(path)
    if image is None:
        return "unreadable"
    reason = imageio.unscorable_reason(image)
    if reason is None:
        return None
    return "blank" if "blank" in reason else f"under {imageio.MIN_IMAGE_SIDE} px a side"


def image_problems(paths: Iterable[Path]) -> list[str | None]:
    """Per path, why the image cannot be used (see ``_image_problem``); threads, since OpenCV releases the GIL."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(_image_problem, paths))


def drop_or_raise(index: pd.DataFrame, problems: dict[str, pd.Series], where: object, drop_missing: bool,
                  fix: str, report: SourceReport | None = None) -> pd.DataFrame:
    """Raise ``DataLayoutError`` for missing or unreadable files, or drop them with a warning."""
    problems = {name: mask for name, mask in problems.items() if mask.any()}
    if not problems:
        return index
    details = "; ".join(f"{int(mask.sum())} {name} (e.g. {examples(index.loc[mask, 'path'])})"
                        for name, mask in problems.items())
    if not drop_missing:
        raise DataLayoutError(f"of {len(index)} images listed under {where}, {details}: {fix} "
                              "or pass drop_missing=True (--drop-missing) to skip them")
    dropped = np.logical_or.reduce([mask.to_numpy() for mask in problems.values()])
    message = f"dropped {int(dropped.sum())} of {len(index)} images listed under {where}: {details}"
    if report is not None:
        report.dropped.update({name: int(mask.sum()) for name, mask in problems.items()})
        report.note(message)
    warnings.warn(message, UserWarning, stacklevel=3)
    return index[~dropped].reset_index(drop=True)


def check_image_files(index: pd.DataFrame, root: Path, where: object, drop_missing: bool, verify_images: bool,
                      fix: str, report: SourceReport | None = None, missing: pd.Series | None = None) -> pd.DataFrame:
    """Report (or drop) the images of ``index`` that are missing under ``root``, and with
    ``verify_images`` those that do not decode or are too small or blank to judge.

    ``missing`` (a mask) replaces the per-file existence check when the caller already knows it.
    """
    if missing is None:
        missing = ~index["path"].map(lambda path: (root / path).is_file())
    problems = {"missing on disk": missing}
    if verify_images:
        # Decoded once each: unreadable files, and images too small or too blank to judge.
        present = index.loc[~missing, "path"]
        found = pd.Series(image_problems(root / path for path in present), index=present.index, dtype=object)
        for name in ("unreadable", "blank", f"under {imageio.MIN_IMAGE_SIDE} px a side"):
            problems[name] = (found == name).reindex(index.index, fill_value=False)
    return drop_or_raise(index, problems, where, drop_missing, fix, report)


def apply_truncation_policy(index: pd.DataFrame, root: Path, keep_truncated: bool, report: SourceReport) -> pd.DataFrame:
    """Find truncated JPEGs (``imageio.is_truncated_jpeg``); drop them unless ``keep_truncated``.

    Either way they are counted and listed in ``report`` (see ``fracture_lib.imageio``).
    """
    jpegs = index["path"].str.lower().str.endswith(imageio.JPEG_SUFFIXES)
    if not jpegs.any():
        return index
    truncated = pd.Series(False, index=index.index)
    truncated.loc[jpegs] = [imageio.is_truncated_jpeg(root / path) for path in index.loc[jpegs, "path"]]
    if not truncated.any():
        return index
    paths = index.loc[truncated, "path"]
    report.truncated = paths.tolist()
    report.truncated_kept = bool(keep_truncated)
    labels = index.loc[truncated, "label"].value_counts().to_dict()
    described = (f"{len(paths)} truncated JPEG(s) (no end-of-image marker; {labels.get(0, 0)} normal, "
                 f"{labels.get(1, 0)} abnormal), e.g. {examples(paths)}")
    if keep_truncated:
        report.note(f"{described}: kept (--keep-truncated); the decoder fills their missing bottom rows with grey")
        return index
    report.dropped["truncated"] = int(len(paths))
    report.note(f"{described}: left out of the index, because their grey-filled bottom rows are an artefact a "
                "model could learn; pass --keep-truncated (keep_truncated=True) to keep them")
    return index[~truncated].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Summaries, fingerprint, files
# ---------------------------------------------------------------------------------------------


def summarize_index(index: pd.DataFrame) -> pd.DataFrame:
    """Count patients, studies and images per split x body part x label.

    Rows are ordered train, val, test, then by body part (MURA's order first) and label.
    """
    summary = (
        index.groupby(["split", "body_part", "label"], sort=False)
        .agg(patients=("patient", "nunique"), studies=("study", "nunique"), images=("path", "size"))
        .reset_index()
    )
    split_order = {name: position for position, name in enumerate(SPLITS)}
    part_order = {name: position for position, name in enumerate(sort_parts(index["body_part"].unique()))}
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
    index = pd.read_csv(source, dtype={"view": "int64", "label": "int64", "patient": str, "study": str,
                                       "source_split": str}, keep_default_na=False)
    missing = [column for column in INDEX_COLUMNS if column not in index.columns]
    if missing:
        raise DataLayoutError(f"index file {source} lacks column(s) {', '.join(missing)}: rebuild it with `python -m fracture_lib index`")
    return index[INDEX_COLUMNS]


def finish_index(index: pd.DataFrame) -> pd.DataFrame:
    """Sort by path, keep the index columns with their types, and check the split is by patient."""
    index = index.sort_values("path", kind="stable").reset_index(drop=True)
    index["view"] = index["view"].astype("int64")
    index["label"] = index["label"].astype("int64")
    index = index[INDEX_COLUMNS]
    check_patient_disjoint(index)
    return index


# ---------------------------------------------------------------------------------------------
# Samples for the exploration report
# ---------------------------------------------------------------------------------------------


def read_images(paths: pd.Series, root: Path) -> list[np.ndarray]:
    """Decode images as uint8 (H, W) arrays; raise ``ImageReadError`` for the first that fails."""
    full_paths = [root / path for path in paths]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(imageio.try_load_image, full_paths))
    for path, image in zip(full_paths, images):
        if image is None:
            raise ImageReadError(path, "missing or not a decodable image; rebuild the index with verify_images=True, drop_missing=True")
    return images


def sample_per_part(index: pd.DataFrame, sample_size: int, seed: int) -> pd.DataFrame:
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


def examples(values: pd.Series | Iterable[object]) -> str:
    """Quote the first few offending values for an error message."""
    values = list(values)
    shown = [str(value) for value in values[:EXAMPLES]]
    more = "" if len(values) <= EXAMPLES else ", ..."
    return ", ".join(shown) + more
