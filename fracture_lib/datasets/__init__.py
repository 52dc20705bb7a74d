"""Data sources: one entry point that recognises what it is given and returns the tidy index.

Three kinds of source are read (one module each):

- ``mura``: a folder that contains ``MURA-v1.1/`` (the real MURA, or the synthetic demo set in
  MURA's layout);
- ``fracatlas``: a FracAtlas folder (``dataset.csv`` + ``images/{Fractured,Non_fractured}/``);
- ``manifest``: a CSV listing ``path,label`` (and optionally ``body_part, patient, study,
  split``), paths relative to the CSV's folder.

``resolve_source(location)`` tells which one a path is; ``index_source`` reads it into the index
of ``datasets.table`` plus a ``SourceReport`` of what reading found (duplicates, contradictions,
truncated files, mixed films); ``build_index`` returns the index alone. Every index's paths are
relative to ``DataSource.root``, the folder that the cache, Grad-CAM and the reports read
images from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from fracture_lib import config
from fracture_lib.datasets import fracatlas, manifest, mura
from fracture_lib.datasets.table import (BOX_COLUMNS, INDEX_COLUMNS, LABEL_NAMES, SPLITS, SourceReport, apply_truncation_policy,
                                         check_patient_disjoint, check_seed, finish_index, index_fingerprint, load_index, read_images,
                                         sample_per_part, save_index, select_parts, sort_parts, summarize_index)
from fracture_lib.errors import DataLayoutError, ParameterError

# The body-part classifier learns a part only when its training split holds at least this many images.
CLASSIFIER_MIN_TRAIN_IMAGES = 20
# Index values that are not one body part, so never a class of the classifier.
NOT_A_PART = ("mixed", "unspecified")

__all__ = ["BOX_COLUMNS", "DataSource", "classifier_parts", "INDEX_COLUMNS", "IndexedSource", "LABEL_NAMES", "SPLITS",
           "SourceReport", "build_index", "check_patient_disjoint", "index_fingerprint", "index_source",
           "load_fracture_boxes", "load_index", "quirks_table", "source_rules", "resolve_source", "sample_image_statistics", "sample_images",
           "save_index", "sort_parts", "summarize_index"]


@dataclass(frozen=True)
class DataSource:
    """Where a data set lives and how to read it.

    ``location`` is what the user named (a MURA data root, a FracAtlas folder, a manifest CSV);
    ``root`` the folder the index's paths are relative to (the same folder, or the CSV's folder).
    """

    kind: str
    location: Path
    root: Path

    @property
    def synthetic(self) -> bool:
        """True for the generated demo set."""
        from fracture_lib import synthetic

        return self.kind == "mura" and synthetic.is_synthetic(self.root)

    @property
    def name(self) -> str:
        """How reports name the source: ``MURA v1.1``, ``synthetic demo``, ``FracAtlas``, ``manifest x.csv``."""
        if self.kind == "mura":
            return "synthetic demo (MURA layout)" if self.synthetic else "MURA v1.1"
        if self.kind == "fracatlas":
            return "FracAtlas"
        return f"manifest {self.location.name}"

    def to_dict(self) -> dict[str, str]:
        """The source as recorded with a run (``config.json``)."""
        return {"kind": self.kind, "location": str(self.location), "root": str(self.root)}


@dataclass
class IndexedSource:
    """A source, its index (every requested part) and what reading it found."""

    source: DataSource
    index: pd.DataFrame
    report: SourceReport


def resolve_source(location: str | os.PathLike[str] | DataSource | None = None) -> DataSource:
    """Tell what kind of source ``location`` is.

    ``None`` (or ``""``, ``"auto"``) means the real MURA in ``data/MURA-v1.1`` when present, else
    the demo set in ``data/demo`` (which may not be generated yet). A ``.csv`` file is a manifest; a
    folder with ``dataset.csv`` and ``images/`` is FracAtlas; any other folder is read as a MURA
    data root (the folder that contains ``MURA-v1.1/``, or that folder itself).
    """
    if isinstance(location, DataSource):
        return location
    if location is None or str(location).strip() in ("", "None", "null", "auto"):
        root = config.resolve_data_root(None)
        return DataSource("mura", root, root)
    path = config.resolve_path(location)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataLayoutError(f"manifest {path} does not exist: check the path (a manifest is a CSV with columns path,label)")
        return DataSource("manifest", path, path.parent)
    if path.is_file():
        raise DataLayoutError(
            f"{path} is a file but not a CSV: pass a folder that contains {config.MURA_DIRNAME}/, a FracAtlas folder "
            "(dataset.csv + images/Fractured, images/Non_fractured) or a manifest CSV (path,label)")
    if fracatlas.is_fracatlas_root(path):
        return DataSource("fracatlas", path, path)
    root = config.resolve_data_root(path)
    return DataSource("mura", root, root)


def _describe_layouts(path: Path) -> str:
    """The error for a folder that is none of the known layouts."""
    return (f"{path} is not a data source this project reads: pass a folder that contains {config.MURA_DIRNAME}/ "
            "(MURA v1.1, or `python -m fracture_lib demo-data` for the synthetic set), a FracAtlas folder "
            "(dataset.csv + images/Fractured, images/Non_fractured) or a manifest CSV (path,label)")


def index_source(
    location: str | os.PathLike[str] | DataSource | None = None,
    parts: str | Iterable[str] | None = None,
    seed: int = config.DEFAULT_SEED,
    val_fraction: float = config.DEFAULT_VAL_FRACTION,
    drop_missing: bool = False,
    verify_images: bool = False,
    keep_truncated: bool = False,
) -> IndexedSource:
    """Read a source into the tidy index with a patient-level split, and report its quirks.

    ``parts=None`` keeps every body part present; otherwise a list or comma-separated string of
    parts (a part the source lacks raises ``DataLayoutError`` naming the parts present). The split
    is drawn on every part before ``parts`` filters the rows, so a patient's split never depends on
    the parts asked for. Images listed but missing on disk (and, with ``verify_images``, images
    that do not decode) raise ``DataLayoutError`` unless ``drop_missing`` is set. Truncated JPEGs
    are left out unless ``keep_truncated`` (see ``fracture_lib.imageio``).
    """
    selected_parts = None if parts is None else config.parse_body_parts(parts)
    check_seed(seed)
    source = resolve_source(location)
    report = SourceReport(kind=source.kind)
    if source.kind == "manifest":
        index = manifest.read_manifest(source.location, seed, val_fraction, drop_missing, verify_images, report)
    elif source.kind == "fracatlas":
        index = fracatlas.read_fracatlas(source.root, seed, drop_missing, verify_images, report)
    else:
        if source.root.is_dir() and not mura.is_mura_root(source.root) and source.root != config.DEMO_DATA_ROOT:
            raise DataLayoutError(_describe_layouts(source.root))
        index = mura.read_mura(source.root, seed, val_fraction, drop_missing, verify_images, report)
    if selected_parts is not None:
        index = select_parts(index, selected_parts, source.location)
    index = apply_truncation_policy(index, source.root, keep_truncated, report)
    return IndexedSource(source, finish_index(index), report)


def build_index(
    location: str | os.PathLike[str] | DataSource | None = None,
    parts: str | Iterable[str] | None = None,
    seed: int = config.DEFAULT_SEED,
    val_fraction: float = config.DEFAULT_VAL_FRACTION,
    drop_missing: bool = False,
    verify_images: bool = False,
    keep_truncated: bool = False,
) -> pd.DataFrame:
    """The index of ``index_source`` alone (see there for the arguments)."""
    return index_source(location, parts=parts, seed=seed, val_fraction=val_fraction, drop_missing=drop_missing,
                        verify_images=verify_images, keep_truncated=keep_truncated).index


def classifier_parts(index: pd.DataFrame, minimum: int = CLASSIFIER_MIN_TRAIN_IMAGES) -> list[str]:
    """The body parts the body-part classifier can learn from ``index``: each with ``minimum`` training images.

    FracAtlas gives hand, leg, hip and shoulder (its ``mixed`` films are no single part); a source
    with one part gives one, and then the classifier is skipped (``predict`` needs ``--part``).
    """
    counts = index.loc[index["split"] == "train", "body_part"].value_counts()
    return sort_parts(part for part, count in counts.items() if count >= minimum and part not in NOT_A_PART)


def source_rules(location: str | os.PathLike[str] | DataSource | None) -> str:
    """How the index reads this kind of source (labels, patients, split), as Markdown bullets."""
    source = resolve_source(location)
    return {"mura": mura.RULES, "fracatlas": fracatlas.RULES, "manifest": manifest.RULES}[source.kind]


def quirks_table(indexed: IndexedSource) -> pd.DataFrame:
    """What reading a source found, one row per kind of finding: count, what was done, examples."""
    report = indexed.report
    truncated_action = ("kept (--keep-truncated)" if report.truncated_kept else "left out of the index")
    rows = [
        ("byte-identical groups", len(report.duplicate_groups), "each group is one patient",
         "; ".join(" = ".join(group) for group in report.duplicate_groups[:2])),
        ("label contradictions", len(report.contradictions), "the folder's label is used",
         ", ".join(report.contradictions[:3])),
        ("truncated JPEGs", len(report.truncated), truncated_action if report.truncated else "",
         ", ".join(report.truncated[:3])),
        ("films of several parts (mixed)", report.mixed, "own part 'mixed', not in per-part training" if report.mixed else "", ""),
        *[(f"dropped: {name}", count, "left out (--drop-missing)", "") for name, count in report.dropped.items()
          if name != "truncated"],
    ]
    return pd.DataFrame(rows, columns=["finding", "count", "what was done", "examples"]).set_index("finding")


def load_fracture_boxes(location: str | os.PathLike[str] | DataSource | None) -> pd.DataFrame:
    """Fracture boxes (``path`` + ``BOX_COLUMNS``, pixels of the saved image) of a source.

    The demo set's ``fracture_boxes.csv`` or FracAtlas's COCO outlines; an empty table for
    sources without boxes (real MURA, manifests).
    """
    from fracture_lib import synthetic

    source = resolve_source(location)
    if source.kind == "fracatlas":
        return fracatlas.fracture_boxes(source.root)
    if source.kind == "mura":
        return synthetic.load_fracture_boxes(source.root)
    return pd.DataFrame(columns=["path", *BOX_COLUMNS])


def sample_image_statistics(
    index: pd.DataFrame,
    location: str | os.PathLike[str] | DataSource | None,
    sample_size: int = 300,
    seed: int = config.DEFAULT_SEED,
) -> pd.DataFrame:
    """Decode a sample of images (about equal per body part) and measure them.

    Returns one row per sampled image: ``path``, ``body_part``, ``label``, ``height`` and
    ``width`` (pixels), ``mean_intensity`` (grey level 0-255) and ``histogram`` (256 pixel counts).
    """
    sample = sample_per_part(index, sample_size, seed)
    images = read_images(sample["path"], resolve_source(location).root)
    sample = sample[["path", "body_part", "label"]].reset_index(drop=True)
    sample["height"] = [image.shape[0] for image in images]
    sample["width"] = [image.shape[1] for image in images]
    sample["mean_intensity"] = [float(image.mean()) for image in images]
    sample["histogram"] = [np.bincount(image.ravel(), minlength=256) for image in images]
    return sample


def sample_images(
    index: pd.DataFrame,
    location: str | os.PathLike[str] | DataSource | None,
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
    sample["image"] = read_images(sample["path"], resolve_source(location).root)
    return sample
