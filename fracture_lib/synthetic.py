"""A synthetic dataset in MURA v1.1's exact layout, so that everything runs without MURA.

``generate_demo_dataset`` lays out studies of elbows, hands and shoulders, each view drawn by
``fracture_lib.phantoms`` as an X-ray projection of bones (cortical shell, textured medulla,
flared ends, joint spaces) in soft tissue, exposed with scatter, blur, noise, collimation and
an L/R marker. Abnormal studies show a fracture (hairline, incomplete, buckle, displaced,
angulated or impacted) on most of their views, a fixation plate over a fracture, or hardware
alone, as MURA's "abnormal" includes hardware; normal studies have look-alike lines (growth
plates in children, nutrient canals, joint spaces) but no break. ``difficulty`` (0 to 1) makes
the fractures subtler. The folders, file names and the four CSV files follow MURA v1.1 exactly,
so the same code reads the demo set and the real dataset. ``fracture_boxes.csv`` gives each
visible fracture's bounding box, for checking Grad-CAM, and ``findings.csv`` what each view
shows. Output depends only on the seed and the difficulty.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pandas as pd

from fracture_lib import config, findings, phantoms
from fracture_lib.datasets.table import BOX_COLUMNS
from fracture_lib.files import replace_path
from fracture_lib.errors import DataLayoutError, ParameterError

DEFAULT_DEMO_PATIENTS = 1600
DEMO_PARTS: tuple[str, ...] = ("elbow", "hand", "shoulder")
MARKER_FILENAME = "SYNTHETIC_DEMO.json"
BOXES_FILENAME = "fracture_boxes.csv"
FINDINGS_FILENAME = "findings.csv"
GENERATOR_VERSION = 3
DEFAULT_DIFFICULTY = findings.DEFAULT_DIFFICULTY
# Share of abnormal studies per part, close to MURA v1.1's training set.
ABNORMAL_SHARE = {"elbow": 0.40, "hand": 0.35, "shoulder": 0.50}
VALID_PATIENT_SHARE = 0.09
VIEW_COUNT_PROBABILITIES = (0.12, 0.45, 0.33, 0.10)  # 1, 2, 3 or 4 views per study
# What an abnormal study shows: a fracture, a fracture fixed with a plate, or hardware alone.
ABNORMAL_FINDINGS = {"fracture": 0.75, "fracture+plate": 0.1, "hardware": 0.15}
CHILD_SHARE = 0.2  # studies of children, whose open growth plates look like lucent lines


@dataclass
class _Study:
    """One study to draw: where it goes and what it shows."""

    patient_number: int
    mura_split: str
    part: str
    study_number: int
    label: int
    views: int


# ---------------------------------------------------------------------------------------------
# Dataset layout
# ---------------------------------------------------------------------------------------------

def _plan_patients(patients: int, seed: int, parts: tuple[str, ...]) -> list[_Study]:
    """Decide every patient's studies (part, label, number of views) and the train/valid split."""
    valid_count = max(1, int(round(patients * VALID_PATIENT_SHARE))) if patients >= 4 else 0
    studies: list[_Study] = []
    for patient in range(1, patients + 1):
        rng = np.random.default_rng([seed, patient, 0])
        mura_split = "valid" if patient > patients - valid_count else "train"
        count = int(rng.choice([1, 2, 3], p=[0.8, 0.17, 0.03]))
        numbers: dict[str, int] = {}
        for _ in range(count):
            part = str(rng.choice(parts))
            numbers[part] = numbers.get(part, 0) + 1
            label = int(rng.random() < ABNORMAL_SHARE[part])
            views = int(rng.choice([1, 2, 3, 4], p=VIEW_COUNT_PROBABILITIES))
            studies.append(_Study(patient, mura_split, part, numbers[part], label, views))
    return studies


def _study_folder(study: _Study) -> str:
    suffix = "positive" if study.label else "negative"
    return (f"{config.MURA_DIRNAME}/{study.mura_split}/XR_{study.part.upper()}/patient{study.patient_number:05d}/"
            f"study{study.study_number}_{suffix}")


def _view_findings(rng: np.random.Generator, study: _Study, difficulty: float) -> list[str]:
    """What each view of a study shows. A fracture is seen on most views of an abnormal study
    (fewer when the set is harder) and always on at least one; hardware on every view."""
    if not study.label:
        return [findings.NO_FINDING] * study.views
    finding = str(rng.choice(list(ABNORMAL_FINDINGS), p=list(ABNORMAL_FINDINGS.values())))
    if finding == findings.HARDWARE:
        return [finding] * study.views
    difficulty = findings.part_difficulty(study.part, difficulty)
    shown = [bool(rng.random() < 0.95 - 0.25 * difficulty) for _ in range(study.views)]
    if not any(shown):
        shown[int(rng.integers(0, study.views))] = True
    hidden = findings.HARDWARE if finding.endswith("+plate") else findings.NO_FINDING
    return [finding if seen else hidden for seen in shown]


def _write_studies(job: tuple[Path, int, float, list[_Study]]) -> list[dict]:
    """Draw and save the images of some studies; return one row per image."""
    root, seed, difficulty, studies = job
    rows = []
    for study in studies:
        part_number = config.ALL_BODY_PARTS.index(study.part) + 1
        rng = np.random.default_rng([seed, study.patient_number, part_number, study.study_number])
        folder = _study_folder(study)
        (root / folder).mkdir(parents=True, exist_ok=True)
        view_findings = _view_findings(rng, study, difficulty)
        child = bool(rng.random() < CHILD_SHARE)
        for view in range(1, study.views + 1):
            image, box, drawn = phantoms.render_view(rng, study.part, view, view_findings[view - 1], difficulty, child)
            relative = f"{folder}/image{view}.png"
            # Light compression: level 1 writes in 3 ms what level 3 writes in 5 (the pixels are the same).
            cv2.imwrite(str(root / relative), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            rows.append({"path": relative, "study": folder, "label": study.label, "box": box, "finding": drawn})
    return rows


def _check_parts(parts: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validate the demo body parts (the generator draws elbow, hand and shoulder)."""
    return config.parse_body_parts(parts if parts is not None else DEMO_PARTS, allowed=DEMO_PARTS)


def _check_difficulty(difficulty: float) -> float:
    """Validate the difficulty (a number from 0, obvious fractures, to 1, subtle ones)."""
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float, np.floating)) or not (
            0.0 <= float(difficulty) <= 1.0):
        raise ParameterError(f"difficulty={difficulty!r} must be a number from 0 (obvious fractures) to 1 (subtle ones)")
    return float(difficulty)


def generate_demo_dataset(out_dir: str | os.PathLike[str], patients: int = DEFAULT_DEMO_PATIENTS,
                          seed: int = config.DEFAULT_SEED, parts: Iterable[str] | str | None = DEMO_PARTS,
                          workers: int | None = None, difficulty: float = DEFAULT_DIFFICULTY) -> Path:
    """Write ``out_dir/MURA-v1.1/`` (images, the four CSVs, boxes, findings, marker); return ``out_dir``."""
    if not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ParameterError(f"patients={patients!r} must be a positive integer")
    difficulty = _check_difficulty(difficulty)
    parts = _check_parts(parts)
    out_dir = config.resolve_path(out_dir)
    started = time.perf_counter()
    studies = _plan_patients(int(patients), int(seed), parts)
    # Build in a temporary sibling and swap it in when complete.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    workers = workers or min(2, os.cpu_count() or 1)
    chunks = [studies[start::max(1, workers * 4)] for start in range(max(1, workers * 4))]
    jobs = [(staging, int(seed), difficulty, chunk) for chunk in chunks if chunk]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_studies, jobs))
    else:
        results = [_write_studies(job) for job in jobs]
    rows = sorted((row for chunk in results for row in chunk), key=lambda row: row["path"])
    mura_dir = staging / config.MURA_DIRNAME
    for mura_split in ("train", "valid"):
        split_rows = [row for row in rows if row["path"].startswith(f"{config.MURA_DIRNAME}/{mura_split}/")]
        (mura_dir / f"{mura_split}_image_paths.csv").write_text("".join(f"{row['path']}\n" for row in split_rows))
        labelled = sorted({(row["study"], row["label"]) for row in split_rows})
        (mura_dir / f"{mura_split}_labeled_studies.csv").write_text(
            "".join(f"{study}/,{label}\n" for study, label in labelled))
    boxes = pd.DataFrame(
        [{"path": row["path"], "x_min": round(row["box"][0], 1), "y_min": round(row["box"][1], 1),
          "x_max": round(row["box"][2], 1), "y_max": round(row["box"][3], 1)} for row in rows if row["box"]],
        columns=["path", *BOX_COLUMNS])
    boxes.to_csv(mura_dir / BOXES_FILENAME, index=False)
    pd.DataFrame([{"path": row["path"], "finding": row["finding"]} for row in rows]).to_csv(
        mura_dir / FINDINGS_FILENAME, index=False)
    marker = {"generator": "fracture_lib.synthetic", "version": GENERATOR_VERSION, "patients": int(patients),
              "seed": int(seed), "difficulty": difficulty, "parts": list(parts), "images": len(rows),
              "studies": len({row["study"] for row in rows}), "seconds": round(time.perf_counter() - started, 2)}
    (mura_dir / MARKER_FILENAME).write_text(json.dumps(marker, indent=2))
    replace_path(staging, out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# A tree laid out from MURA's real label files (for scale benchmarks)
# ---------------------------------------------------------------------------------------------

# MURA's seven study types, drawn by the nearest of the three parts the phantoms know.
DRAWN_AS = {"elbow": "elbow", "forearm": "elbow", "humerus": "shoulder", "shoulder": "shoulder",
            "finger": "hand", "hand": "hand", "wrist": "hand"}
MURA_LONG_SIDE = 512  # MURA's films are about 512 px on their long side
LABEL_FILES = ("train_image_paths.csv", "train_labeled_studies.csv", "valid_image_paths.csv",
               "valid_labeled_studies.csv")


def _read_label_files(label_dir: Path, limit: int | None) -> list[tuple[str, int, list[str]]]:
    """``(study folder, label, image file names)`` for every study of MURA's four CSV files, in their order.

    With ``limit``, whole studies are kept (in file order) until ``limit`` images are reached.
    """
    missing = [name for name in LABEL_FILES if not (label_dir / name).is_file()]
    if missing:
        raise DataLayoutError(f"{label_dir / missing[0]} is missing: pass the folder holding MURA v1.1's four "
                              f"CSV files ({', '.join(LABEL_FILES)})")
    studies: dict[str, tuple[int, list[str]]] = {}
    for mura_split in ("train", "valid"):
        labels = pd.read_csv(label_dir / f"{mura_split}_labeled_studies.csv", header=None, names=["study", "label"])
        known = {str(study).rstrip("/"): int(label) for study, label in zip(labels["study"], labels["label"])}
        paths = pd.read_csv(label_dir / f"{mura_split}_image_paths.csv", header=None, names=["path"])["path"]
        for path in paths.astype(str):
            study, _, name = path.rpartition("/")
            if study not in known:
                raise DataLayoutError(f"{path} (in {label_dir / f'{mura_split}_image_paths.csv'}) has no study in "
                                      f"{mura_split}_labeled_studies.csv: the label files do not match")
            studies.setdefault(study, (known[study], []))[1].append(name)
    chosen, images = [], 0
    for study, (label, names) in studies.items():
        if limit is not None and images >= limit:
            break
        chosen.append((study, label, names))
        images += len(names)
    return chosen


def _write_labelled_studies(job: tuple[Path, int, float, int, list[tuple[str, int, list[str]]]]) -> int:
    """Draw and save the films of some studies of a label-file layout; return how many were written."""
    root, seed, difficulty, long_side, studies = job
    written = 0
    for folder, label, names in studies:
        # MURA-v1.1/<split>/XR_<PART>/patient<number>/study<number>_<positive|negative>
        _, mura_split, part_folder, patient, study_name = folder.split("/")
        part = part_folder.removeprefix("XR_").lower()
        drawn = DRAWN_AS.get(part, "hand")
        study = _Study(int(patient.removeprefix("patient")), mura_split, drawn,
                       int(study_name.removeprefix("study").split("_")[0]), label, len(names))
        rng = np.random.default_rng([seed, zlib.crc32(folder.encode())])
        view_findings = _view_findings(rng, study, difficulty)
        child = bool(rng.random() < CHILD_SHARE)
        (root / folder).mkdir(parents=True, exist_ok=True)
        for view, name in enumerate(names, start=1):
            image, _, _ = phantoms.render_view(rng, drawn, view, view_findings[view - 1], difficulty, child)
            # Scale the film to MURA's size: its long side becomes `long_side` pixels.
            scale = long_side / max(image.shape)
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
            cv2.imwrite(str(root / folder / name), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            written += 1
    return written


def generate_from_label_files(label_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                              limit: int | None = None, long_side: int = MURA_LONG_SIDE,
                              seed: int = config.DEFAULT_SEED, workers: int | None = None,
                              difficulty: float = DEFAULT_DIFFICULTY) -> Path:
    """Write ``out_dir/MURA-v1.1/`` with MURA's own paths and labels, every film a phantom.

    ``label_dir`` holds MURA v1.1's four CSV files (all 40,005 image paths); they are copied as
    they are (cut to whole studies when ``limit`` images are asked for), so the index, splits and
    study counts are MURA's. Each film is drawn for the nearest part the phantoms know
    (``DRAWN_AS``) at MURA's size (long side ``long_side``). Content is synthetic: the tree is for
    measuring speed and memory at MURA's scale, not for training a model of any use.
    """
    label_dir = Path(label_dir)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ParameterError(f"limit={limit!r} must be a positive number of images")
    if isinstance(long_side, bool) or not isinstance(long_side, (int, np.integer)) or long_side < 64:
        raise ParameterError(f"long_side={long_side!r} must be an integer of at least 64 pixels")
    difficulty = _check_difficulty(difficulty)
    studies = _read_label_files(label_dir, limit)
    out_dir = config.resolve_path(out_dir)
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        workers = workers or min(2, os.cpu_count() or 1)
        chunk_count = max(1, workers * 16)
        jobs = [(staging, int(seed), difficulty, int(long_side), studies[start::chunk_count]) for start in range(chunk_count)]
        jobs = [job for job in jobs if job[-1]]
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                images = sum(pool.map(_write_labelled_studies, jobs))
        else:
            images = sum(_write_labelled_studies(job) for job in jobs)
        mura_dir = staging / config.MURA_DIRNAME
        mura_dir.mkdir(exist_ok=True)
        for mura_split in ("train", "valid"):
            kept = [(folder, label, names) for folder, label, names in studies if folder.split("/")[1] == mura_split]
            (mura_dir / f"{mura_split}_image_paths.csv").write_text(
                "".join(f"{folder}/{name}\n" for folder, _, names in kept for name in names))
            (mura_dir / f"{mura_split}_labeled_studies.csv").write_text(
                "".join(f"{folder}/,{label}\n" for folder, label, _ in kept))
        marker = {"generator": "fracture_lib.synthetic.generate_from_label_files", "version": GENERATOR_VERSION,
                  "layout_from": str(label_dir.resolve()), "seed": int(seed), "difficulty": difficulty,
                  "long_side": int(long_side), "parts": sorted({folder.split("/")[2].removeprefix("XR_").lower()
                                                               for folder, _, _ in studies}),
                  "images": images, "studies": len(studies),
                  "patients": len({folder.split("/")[3] for folder, _, _ in studies}),
                  "seconds": round(time.perf_counter() - started, 2)}
        (mura_dir / MARKER_FILENAME).write_text(json.dumps(marker, indent=2))
        replace_path(staging, out_dir)
    except BaseException:
        # A failed or interrupted run leaves no half-written tree behind; an earlier tree stays as it was.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def demo_parameters(data_root: str | os.PathLike[str]) -> dict | None:
    """The generator parameters stored with a demo set, or None when the folder is not one."""
    marker = Path(data_root) / config.MURA_DIRNAME / MARKER_FILENAME
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def is_synthetic(data_root: str | os.PathLike[str]) -> bool:
    """Tell whether ``data_root/MURA-v1.1`` is a generated demo set."""
    return demo_parameters(data_root) is not None


def load_fracture_boxes(data_root: str | os.PathLike[str]) -> pd.DataFrame:
    """The fracture boxes of a demo set (empty for real MURA, which has none)."""
    path = Path(data_root) / config.MURA_DIRNAME / BOXES_FILENAME
    if not path.is_file():
        return pd.DataFrame(columns=["path", *BOX_COLUMNS])
    return pd.read_csv(path)


def load_findings(data_root: str | os.PathLike[str]) -> pd.DataFrame:
    """What each view of a demo set shows (path, finding); empty for real MURA."""
    path = Path(data_root) / config.MURA_DIRNAME / FINDINGS_FILENAME
    if not path.is_file():
        return pd.DataFrame(columns=["path", "finding"])
    return pd.read_csv(path)


def ensure_demo_dataset(out_dir: str | os.PathLike[str] | None = None, patients: int | None = None,
                        seed: int | None = None, parts: Iterable[str] | str | None = None,
                        difficulty: float | None = None) -> Path:
    """Return a complete demo set in ``out_dir``, generating it only when needed.

    An existing set is reused when the given parameters (None = "any") match the stored ones;
    a missing one is generated with the defaults for parameters left as None.
    """
    out_dir = config.resolve_path(out_dir or config.DEMO_DATA_ROOT)
    stored = demo_parameters(out_dir)
    if (out_dir / config.MURA_DIRNAME).is_dir() and stored is None:
        raise DataLayoutError(
            f"{out_dir / config.MURA_DIRNAME} exists but is not a generated demo set: "
            f"pass another folder or remove it")
    wanted = {"patients": patients, "seed": seed,
              "parts": list(_check_parts(parts)) if parts is not None else None,
              "difficulty": _check_difficulty(difficulty) if difficulty is not None else None}
    if stored is not None and stored.get("version") == GENERATOR_VERSION and all(
            value is None or stored.get(key) == value for key, value in wanted.items()):
        return out_dir
    return generate_demo_dataset(
        out_dir,
        patients=patients if patients is not None else DEFAULT_DEMO_PATIENTS,
        seed=seed if seed is not None else config.DEFAULT_SEED,
        parts=parts if parts is not None else DEMO_PARTS,
        difficulty=difficulty if difficulty is not None else DEFAULT_DIFFICULTY,
    )
