"""A synthetic dataset in MURA v1.1's exact layout, so that everything runs without MURA.

``generate_demo_dataset`` draws radiograph-like images of elbows, hands and shoulders: a dark
background, a soft-tissue envelope, bones with a bright cortex and a darker medullary cavity,
overlapping bones, joint spaces, exposure and contrast variation, noise, small rotations,
collimation borders, an L/R marker and technologist initials. Abnormal studies show a fracture
(a jagged lucent line through a bone, often with displacement or angulation) on most of their
views; normal studies have look-alike lines (growth plates, nutrient canals, joint spaces) but
no break. The folders, file names and the four CSV files follow MURA v1.1 exactly, so the same
code reads the demo set and the real dataset. ``fracture_boxes.csv`` gives each visible
fracture's bounding box, for checking Grad-CAM. Output depends only on the seed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pandas as pd

from fracture_lib import config
from fracture_lib.datasets.table import BOX_COLUMNS
from fracture_lib.files import replace_path
from fracture_lib.errors import DataLayoutError, ParameterError

DEFAULT_DEMO_PATIENTS = 1100
DEMO_PARTS: tuple[str, ...] = ("elbow", "hand", "shoulder")
MARKER_FILENAME = "SYNTHETIC_DEMO.json"
BOXES_FILENAME = "fracture_boxes.csv"
GENERATOR_VERSION = 1
# Share of abnormal studies per part, close to MURA v1.1's training set.
ABNORMAL_SHARE = {"elbow": 0.40, "hand": 0.35, "shoulder": 0.50}
VALID_PATIENT_SHARE = 0.09
VIEW_COUNT_PROBABILITIES = (0.12, 0.45, 0.33, 0.10)  # 1, 2, 3 or 4 views per study


@dataclass
class _Bone:
    """A long bone drawn as a capsule: cortex of ``width`` pixels around a medullary cavity."""

    start: np.ndarray
    end: np.ndarray
    width: float
    fracturable: bool = True


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
# Anatomy: each function returns bones in normalised coordinates (x, y in 0..1 of the image).
# ---------------------------------------------------------------------------------------------

def _elbow(rng: np.random.Generator, view: int) -> tuple[list[_Bone], list[tuple]]:
    """Humerus meeting radius and ulna at an angled joint; lateral views flex the elbow."""
    joint = np.array([0.5 + rng.normal(0, 0.03), 0.5 + rng.normal(0, 0.03)])
    flexion = math.radians(rng.uniform(0, 15) if view % 2 == 0 else rng.uniform(35, 80))
    humerus_angle = math.radians(-90 + rng.normal(0, 6))
    humerus_end = joint + 0.48 * np.array([math.cos(humerus_angle), math.sin(humerus_angle)])
    forearm_angle = math.radians(90 + rng.normal(0, 5)) - flexion * rng.choice([-1, 1])
    direction = np.array([math.cos(forearm_angle), math.sin(forearm_angle)])
    normal = np.array([-direction[1], direction[0]])
    bones = [
        _Bone(humerus_end, joint - np.array([0, 0.02]), 0.11),
        _Bone(joint + 0.05 * normal + 0.03 * direction, joint + 0.065 * normal + 0.5 * direction, 0.065),  # radius
        _Bone(joint - 0.05 * normal - 0.01 * direction, joint - 0.055 * normal + 0.5 * direction, 0.07),  # ulna
    ]
    # Condyles of the distal humerus and the olecranon: blobs at the joint.
    blobs = [(joint, (0.1, 0.05), math.degrees(humerus_angle) + 90, 0.9),
             (joint - 0.05 * normal - 0.02 * direction, (0.045, 0.04), 0.0, 0.85)]
    return bones, blobs


def _hand(rng: np.random.Generator, view: int) -> tuple[list[_Bone], list[tuple]]:
    """Carpal bones, five metacarpals fanning out and the phalanges with joint spaces."""
    wrist = np.array([0.5 + rng.normal(0, 0.02), 0.86 + rng.normal(0, 0.02)])
    spread = rng.uniform(0.7, 1.1) * (0.6 if view % 3 == 2 else 1.0)  # an oblique view narrows the fan
    bones: list[_Bone] = [
        _Bone(wrist + np.array([-0.06, 0.25]), wrist + np.array([-0.055, 0.06]), 0.06),  # radius
        _Bone(wrist + np.array([0.07, 0.25]), wrist + np.array([0.065, 0.07]), 0.045),  # ulna
    ]
    blobs = []
    for row in range(2):
        for column in range(4):
            centre = wrist + np.array([(column - 1.5) * 0.045, -0.01 - row * 0.042])
            blobs.append((centre, (0.024, 0.02), rng.uniform(0, 180), 0.8))
    for finger in range(5):
        angle = math.radians(-90 + (finger - 2) * 9 * spread + rng.normal(0, 2))
        if finger == 0:
            angle = math.radians(-90 - 45 * spread)
        direction = np.array([math.cos(angle), math.sin(angle)])
        base = wrist + np.array([(finger - 2) * 0.045, -0.08])
        lengths = [0.2, 0.12, 0.08, 0.06] if finger else [0.14, 0.095, 0.07]
        widths = [0.045, 0.04, 0.034, 0.028] if finger else [0.048, 0.04, 0.034]
        position = base
        for segment, (length, width) in enumerate(zip(lengths, widths)):
            # Fingers curl slightly; joints leave a small gap (a natural lucent line).
            bend = math.radians(rng.normal(0, 4) + segment * rng.uniform(0, 4))
            angle += bend
            direction = np.array([math.cos(angle), math.sin(angle)])
            end = position + length * direction
            # Phalanges are too thin to show a break at training resolution: fracture metacarpals.
            bones.append(_Bone(position, end, width, fracturable=segment == 0))
            position = end + 0.012 * direction
    return bones, blobs


def _shoulder(rng: np.random.Generator, view: int) -> tuple[list[_Bone], list[tuple]]:
    """Humeral head and shaft, glenoid, clavicle, acromion and the scapula's outline."""
    head = np.array([0.52 + rng.normal(0, 0.03), 0.42 + rng.normal(0, 0.03)])
    shaft_angle = math.radians(95 + rng.normal(0, 6) + (20 if view % 2 else 0))
    direction = np.array([math.cos(shaft_angle), math.sin(shaft_angle)])
    clavicle_y = head[1] - 0.2 + rng.normal(0, 0.02)
    bones = [
        _Bone(head + 0.06 * direction, head + 0.62 * direction, 0.09),  # humeral neck and shaft
        _Bone(np.array([0.05, clavicle_y + 0.06]), np.array([0.62, clavicle_y]), 0.045),  # clavicle
        _Bone(np.array([0.62, clavicle_y + 0.02]), np.array([0.78, clavicle_y + 0.05]), 0.05, False),  # acromion
    ]
    blobs = [(head, (0.12, 0.13), 0.0, 0.95),  # humeral head
             (head + np.array([-0.15, 0.02]), (0.035, 0.09), 10.0, 0.8)]  # glenoid
    return bones, blobs


ANATOMY = {"elbow": _elbow, "hand": _hand, "shoulder": _shoulder}


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------

def _affine(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random placement: rotation up to 12 degrees, scale and shift, from 0..1 to pixels."""
    side = min(width, height)
    scale = side * rng.uniform(0.85, 1.05)
    angle = math.radians(rng.uniform(-12, 12))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
    centre = np.array([width / 2 + rng.normal(0, width * 0.03), height / 2 + rng.normal(0, height * 0.03)])
    offset = centre - rotation @ np.array([0.5, 0.5])
    return np.hstack([rotation, offset[:, None]])


def _to_pixels(matrix: np.ndarray, point: np.ndarray) -> np.ndarray:
    return matrix[:, :2] @ point + matrix[:, 2]


def _point(values: np.ndarray) -> tuple[int, int]:
    return int(round(values[0])), int(round(values[1]))


def _draw_capsule(layer: np.ndarray, start: np.ndarray, end: np.ndarray, width: float,
                  cortex: float, medulla: float) -> None:
    """A bone segment: bright cortical shell, darker medullary cavity, rounded ends."""
    thickness = max(2, int(round(width)))
    cv2.line(layer, _point(start), _point(end), cortex, thickness, cv2.LINE_AA)
    inner = max(1, int(round(width * 0.5)))
    cv2.line(layer, _point(start), _point(end), medulla, inner, cv2.LINE_AA)


def _inside(point: np.ndarray, frame: tuple[int, int], margin: float) -> bool:
    """Whether ``point`` lies at least ``margin`` pixels inside a ``(width, height)`` film."""
    return margin <= point[0] <= frame[0] - 1 - margin and margin <= point[1] <= frame[1] - 1 - margin


def _draw_fracture(layer: np.ndarray, bone_start: np.ndarray, bone_end: np.ndarray, width: float,
                   rng: np.random.Generator, cortex: float, medulla: float,
                   frame: tuple[int, int]) -> tuple[float, float, float, float]:
    """Break a bone: a jagged lucent line across it, often with displacement or angulation.

    The fracture site lies in the middle of the bone and on the film (``frame`` is its width and
    height). Returns the fracture's bounding box (x_min, y_min, x_max, y_max) in pixels.
    """
    length_vector = bone_end - bone_start
    length = float(np.linalg.norm(length_vector))
    direction = length_vector / max(length, 1e-6)
    normal = np.array([-direction[1], direction[0]])
    fractions = rng.uniform(0.3, 0.7, size=16)
    on_film = [fraction for fraction in fractions if _inside(bone_start + fraction * length_vector, frame, width)]
    site = bone_start + (on_film[0] if on_film else fractions[0]) * length_vector
    # Displaced or angulated fractures redraw the distal fragment moved; hairline ones do not.
    severity = rng.random()
    if severity < 0.85:
        shift = normal * width * rng.uniform(0.6, 1.2) * rng.choice([-1, 1])
        tilt = math.radians(rng.uniform(10, 30) * rng.choice([-1, 1]))
        rotation = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
        distal_end = site + shift + rotation @ (bone_end - site)
        # Erase the distal part and draw the moved fragment.
        cv2.line(layer, _point(site + direction * 2), _point(bone_end), 0.0, int(round(width)) + 3, cv2.LINE_AA)
        _draw_capsule(layer, site + shift, distal_end, width, cortex, medulla)
    # The fracture line: a jagged polyline across the bone, oblique up to 35 degrees.
    obliquity = math.radians(rng.uniform(-35, 35))
    across = normal * math.cos(obliquity) + direction * math.sin(obliquity)
    half = width * 0.85
    points = [site - across * half + direction * rng.normal(0, width * 0.08) + across * (half * 2) * fraction
              for fraction in np.linspace(0, 1, 5)]
    gap = max(4, int(round(width * rng.uniform(0.5, 0.75))))
    cv2.polylines(layer, [np.array([_point(point) for point in points], dtype=np.int32)], False, 0.05, gap, cv2.LINE_AA)
    margin = width * 0.9
    return (float(site[0] - margin), float(site[1] - margin), float(site[0] + margin), float(site[1] + margin))


def _draw_look_alike(layer: np.ndarray, bone: _Bone, matrix: np.ndarray, rng: np.random.Generator,
                     medulla: float) -> None:
    """A line that is not a fracture: a faint growth plate near a bone end or a thin nutrient canal."""
    start, end = _to_pixels(matrix, bone.start), _to_pixels(matrix, bone.end)
    width = bone.width * float(np.linalg.norm(matrix[:, 0]))
    direction = (end - start) / max(float(np.linalg.norm(end - start)), 1e-6)
    normal = np.array([-direction[1], direction[0]])
    if rng.random() < 0.5:
        # Growth plate: a smooth, thin, faint band across the whole bone close to one end.
        site = start + (end - start) * rng.choice([0.1, 0.9])
        half = width * 0.5
        cv2.line(layer, _point(site - normal * half), _point(site + normal * half), medulla * 0.75, 1, cv2.LINE_AA)
    else:
        # Nutrient canal: a thin oblique line inside the cortex that does not cross the bone.
        site = start + (end - start) * rng.uniform(0.3, 0.7)
        tip = site + (direction * 0.9 + normal * 0.4) * width * 0.6
        cv2.line(layer, _point(site), _point(tip), medulla * 0.8, 1, cv2.LINE_AA)


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur, computed on a quarter-size copy because only the smooth shape matters."""
    height, width = image.shape
    small = cv2.resize(image, (max(1, width // 4), max(1, height // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(0.5, sigma / 4))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _render_view(rng: np.random.Generator, part: str, view: int, fractured: bool) -> tuple[np.ndarray, tuple | None]:
    """Draw one radiograph; return the 8-bit image and the fracture box (or None)."""
    long_side = int(rng.integers(300, 513))
    ratio = rng.uniform(0.55, 0.9)
    if rng.random() < 0.2:
        width, height = long_side, int(long_side * ratio)
    else:
        width, height = int(long_side * ratio), long_side
    matrix = _affine(rng, width, height)
    scale = float(np.linalg.norm(matrix[:, 0]))
    bones, blobs = ANATOMY[part](rng, view)

    # Soft tissue: a blurred envelope around every bone.
    tissue = np.zeros((height, width), np.float32)
    for bone in bones:
        cv2.line(tissue, _point(_to_pixels(matrix, bone.start)), _point(_to_pixels(matrix, bone.end)), 1.0,
                 max(3, int(bone.width * scale * rng.uniform(2.6, 3.4))), cv2.LINE_AA)
    for centre, axes, angle, _ in blobs:
        cv2.ellipse(tissue, _point(_to_pixels(matrix, centre)),
                    (int(axes[0] * scale * 2.2), int(axes[1] * scale * 2.2)), angle, 0, 360, 1.0, -1, cv2.LINE_AA)
    tissue = _smooth(tissue, max(3.0, 0.03 * long_side))

    # Bones on their own layers; overlapping bones add up, as attenuation does. The hand's bones
    # hardly overlap, so they share one layer (much faster); a fractured bone always gets its own.
    cortex, medulla = rng.uniform(0.8, 0.95), rng.uniform(0.45, 0.6)
    bone_layer = np.zeros((height, width), np.float32)
    for centre, axes, angle, brightness in blobs:
        cv2.ellipse(bone_layer, _point(_to_pixels(matrix, centre)),
                    (max(2, int(axes[0] * scale)), max(2, int(axes[1] * scale))),
                    angle, 0, 360, cortex * brightness, -1, cv2.LINE_AA)
        cv2.ellipse(bone_layer, _point(_to_pixels(matrix, centre)),
                    (max(1, int(axes[0] * scale * 0.7)), max(1, int(axes[1] * scale * 0.7))),
                    angle, 0, 360, medulla * brightness, -1, cv2.LINE_AA)
    chosen = -1
    if fractured:
        candidates = [number for number, bone in enumerate(bones) if bone.fracturable]
        # Prefer bones whose middle is on the film, so the fracture can be seen.
        visible = [number for number in candidates
                   if _inside(_to_pixels(matrix, (bones[number].start + bones[number].end) / 2), (width, height),
                              bones[number].width * scale)]
        chosen = int(rng.choice(visible or candidates))
    layer_of = [number if (part != "hand" or number == chosen) else -1 for number in range(len(bones))]
    layers = {key: np.zeros_like(bone_layer) for key in set(layer_of)}
    for bone, key in zip(bones, layer_of):
        _draw_capsule(layers[key], _to_pixels(matrix, bone.start), _to_pixels(matrix, bone.end), bone.width * scale,
                      cortex, medulla)
    box = None
    if fractured:
        bone = bones[chosen]
        box = _draw_fracture(layers[chosen], _to_pixels(matrix, bone.start), _to_pixels(matrix, bone.end),
                             bone.width * scale, rng, cortex, medulla, (width, height))
    # Soft-tissue swelling (a haematoma) surrounds most fractures; a few normal studies have it too.
    swelling_site = None
    if box is not None and rng.random() < 0.85:
        swelling_site = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    elif box is None and rng.random() < 0.1:
        bone = bones[int(rng.integers(0, len(bones)))]
        swelling_site = _to_pixels(matrix, bone.start + rng.uniform(0.3, 0.7) * (bone.end - bone.start))
    if swelling_site is not None:
        swelling = np.zeros_like(tissue)
        radius = int(max(6, (box[2] - box[0]) if box is not None else 0.08 * scale) * rng.uniform(0.9, 1.4))
        cv2.circle(swelling, _point(swelling_site), radius, 1.0, -1, cv2.LINE_AA)
        tissue = tissue + 0.6 * _smooth(swelling, radius * 0.4)
    # Look-alike lines appear in every class.
    for _ in range(int(rng.integers(0, 3))):
        number = int(rng.integers(0, len(bones)))
        _draw_look_alike(layers[layer_of[number]], bones[number], matrix, rng, medulla)
    for layer in layers.values():
        bone_layer = np.maximum(bone_layer, layer) + 0.25 * np.minimum(bone_layer, layer)

    # Exposure: background, tissue and bone, then blur, gamma, noise.
    background = rng.uniform(0.02, 0.1)
    image = background + tissue * rng.uniform(0.22, 0.38) + bone_layer * rng.uniform(0.65, 0.85)
    gradient = np.linspace(rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), width, dtype=np.float32)
    image = image + gradient[None, :]
    image = cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(0.6, 1.3))
    image = np.clip(image, 0, 1) ** rng.uniform(0.8, 1.25)
    image = image + rng.uniform(0.01, 0.03) * rng.standard_normal(image.shape, dtype=np.float32)

    # Collimation: uniform bands with sharp edges on some sides.
    for side in range(4):
        if rng.random() < 0.35:
            depth = int(rng.uniform(0.03, 0.1) * (width if side % 2 else height))
            value = rng.uniform(0.0, 0.12)
            if side == 0:
                image[:depth] = value
            elif side == 1:
                image[:, width - depth:] = value
            elif side == 2:
                image[height - depth:] = value
            else:
                image[:, :depth] = value
    # The L/R marker and the technologist's initials, as on real films.
    pixels = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    marker_scale = long_side / 400
    corner = (int(rng.uniform(0.05, 0.2) * width), int(rng.uniform(0.08, 0.2) * height))
    cv2.putText(pixels, str(rng.choice(["L", "R"])), corner, font, 1.1 * marker_scale, 247,
                max(1, int(2 * marker_scale)), cv2.LINE_AA)
    initials = "".join(rng.choice(list("ABCDEGHJKLMNPRSTW"), 2))
    cv2.putText(pixels, initials, (int(width * 0.7), int(height * 0.94)), font, 0.45 * marker_scale, 217, 1, cv2.LINE_AA)
    if box is not None:
        box = (max(0.0, box[0]), max(0.0, box[1]), min(width - 1.0, box[2]), min(height - 1.0, box[3]))
        # A fracture that lies outside the film is not visible on this view: no box.
        if box[2] <= box[0] or box[3] <= box[1]:
            box = None
    return pixels, box


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


def _write_studies(job: tuple[Path, int, list[_Study]]) -> list[dict]:
    """Draw and save the images of some studies; return one row per image."""
    root, seed, studies = job
    rows = []
    for study in studies:
        part_number = config.ALL_BODY_PARTS.index(study.part) + 1
        rng = np.random.default_rng([seed, study.patient_number, part_number, study.study_number])
        folder = _study_folder(study)
        (root / folder).mkdir(parents=True, exist_ok=True)
        # Abnormal studies show the fracture on most views, and always on at least one.
        shown = [bool(rng.random() < 0.95) for _ in range(study.views)] if study.label else [False] * study.views
        if study.label and not any(shown):
            shown[int(rng.integers(0, study.views))] = True
        for view in range(1, study.views + 1):
            image, box = _render_view(rng, study.part, view, shown[view - 1])
            relative = f"{folder}/image{view}.png"
            cv2.imwrite(str(root / relative), image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
            rows.append({"path": relative, "study": folder, "label": study.label, "box": box})
    return rows


def _check_parts(parts: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validate the demo body parts (the generator draws elbow, hand and shoulder)."""
    return config.parse_body_parts(parts if parts is not None else DEMO_PARTS, allowed=DEMO_PARTS)


def generate_demo_dataset(out_dir: str | os.PathLike[str], patients: int = DEFAULT_DEMO_PATIENTS,
                          seed: int = config.DEFAULT_SEED, parts: Iterable[str] | str | None = DEMO_PARTS,
                          workers: int | None = None) -> Path:
    """Write ``out_dir/MURA-v1.1/`` (images, the four CSVs, boxes, marker); return ``out_dir``."""
    if not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ParameterError(f"patients={patients!r} must be a positive integer")
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
    jobs = [(staging, int(seed), chunk) for chunk in chunks if chunk]
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
    marker = {"generator": "fracture_lib.synthetic", "version": GENERATOR_VERSION, "patients": int(patients),
              "seed": int(seed), "parts": list(parts), "images": len(rows),
              "studies": len({row["study"] for row in rows}), "seconds": round(time.perf_counter() - started, 2)}
    (mura_dir / MARKER_FILENAME).write_text(json.dumps(marker, indent=2))
    replace_path(staging, out_dir)
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


def ensure_demo_dataset(out_dir: str | os.PathLike[str] | None = None, patients: int | None = None,
                        seed: int | None = None, parts: Iterable[str] | str | None = None) -> Path:
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
              "parts": list(_check_parts(parts)) if parts is not None else None}
    if stored is not None and stored.get("version") == GENERATOR_VERSION and all(
            value is None or stored.get(key) == value for key, value in wanted.items()):
        return out_dir
    return generate_demo_dataset(
        out_dir,
        patients=patients if patients is not None else DEFAULT_DEMO_PATIENTS,
        seed=seed if seed is not None else config.DEFAULT_SEED,
        parts=parts if parts is not None else DEMO_PARTS,
    )
