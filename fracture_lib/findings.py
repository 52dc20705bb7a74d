"""Findings of the demo phantoms: fractures, the lucent lines that only look like them, and hardware.

A fracture is drawn in its bone's own coordinates (``Fracture``); ``fracture_lib.phantoms``
projects it. ``difficulty`` (0 to 1) makes fractures subtler: more hairline and buckle
fractures, narrower and fainter lines, smaller displacements. At low difficulty a fracture's
gap and movement have floors in pixels of the default model input (``REFERENCE_INPUT_SIZE``),
so that the break stays visible on a film shrunk to that size. Look-alikes (a child's growth
plates, nutrient canals) and fixation hardware (a plate with screws, or K-wires) are drawn here
too. ``fracture_box`` gives the box that ``fracture_boxes.csv`` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fracture_lib.anatomy import Anatomy, Bone, rotate

DEFAULT_DIFFICULTY = 0.2
# Parts drawn easier than the difficulty asked for, by this much: a hand's bones are about four
# pixels wide at the 128 px input, and at the same difficulty as the elbow and shoulder the
# default recipe learnt its fractures only to a study AUROC of 0.74 (docs/demo-phantoms.md).
PART_EASE = {"hand": 0.2}
FRACTURE_KINDS: tuple[str, ...] = ("hairline", "incomplete", "buckle", "displaced", "angulated", "impacted")
SUBTLE_KINDS: tuple[str, ...] = ("hairline", "incomplete", "buckle")
# A finding is one of the fracture kinds, "hardware" alone, "<kind>+plate" (a fixed fracture) or "none".
NO_FINDING = "none"
HARDWARE = "hardware"
# The default recipe's input side (params.yaml's img_size). Fractures have floors in its pixels,
# so that at low difficulty a break stays visible on a film shrunk to that size.
REFERENCE_INPUT_SIZE = 128


@dataclass
class Fracture:
    """A fracture of one bone, in that bone's own coordinates (pixels along and across it)."""

    kind: str
    site: float  # where along the bone, 0..1
    obliquity: float  # radians from straight across
    gap: float  # width of the lucent line, pixels
    depth: float  # share of the attenuation the line removes
    extent: float  # share of the width the line crosses (1: complete)
    side: int  # the cortex an incomplete line or a buckle starts from (+1 or -1)
    shift: float = 0.0  # displacement of the distal fragment across the bone, pixels
    tilt: float = 0.0  # angulation of the distal fragment, radians
    overlap: float = 0.0  # impaction: the fragments pushed into each other, pixels
    zigzag: float = 1.0  # amplitude of the jagged line, pixels
    phase: float = 0.0


def part_difficulty(part: str, difficulty: float) -> float:
    """The difficulty a part is drawn at: ``difficulty`` less the part's ease, at least 0."""
    return max(0.0, float(difficulty) - PART_EASE.get(part, 0.0))


def draw_fracture(rng: np.random.Generator, radius_pixels: float, difficulty: float,
                  input_pixel: float = 1.0) -> Fracture:
    """A random fracture of a bone of shaft radius ``radius_pixels``; harder = subtler.

    ``input_pixel`` is the film's pixels per pixel of the model input (REFERENCE_INPUT_SIZE):
    the gap and the fragments' movement are at least a share of it that falls with difficulty.
    """
    subtle_share = 0.1 + 0.7 * difficulty
    if rng.random() < subtle_share:
        kind = str(rng.choice(SUBTLE_KINDS))
    else:
        kind = str(rng.choice(("displaced", "angulated", "impacted")))
    ease = 0.25 + 2.75 * (1.0 - difficulty) ** 2  # 3 at difficulty 0, about 0.94 at 0.5, 0.25 at 1
    fracture = Fracture(
        kind=kind,
        site=float(rng.uniform(0.3, 0.7) if kind != "buckle" else rng.choice([0.15, 0.85]) + rng.normal(0, 0.03)),
        obliquity=math.radians(rng.uniform(-40, 40)),
        gap=max(1.0, radius_pixels * rng.uniform(0.15, 0.35) * (0.5 + ease), input_pixel * 0.9 * ease),
        depth=float(np.clip(rng.uniform(0.45, 0.8) * (0.55 + 0.6 * ease), 0.15, 0.95)),
        extent=1.0,
        side=int(rng.choice([-1, 1])),
        zigzag=radius_pixels * rng.uniform(0.05, 0.2),
        phase=float(rng.uniform(0, 2 * math.pi)),
    )
    if kind == "hairline":
        fracture.gap = max(1.0, fracture.gap * 0.45)
    elif kind == "incomplete":
        fracture.extent = float(rng.uniform(0.3, 0.65))
    elif kind == "displaced":
        fracture.shift = max(radius_pixels * rng.uniform(0.3, 1.1) * (0.4 + ease),
                             input_pixel * rng.uniform(1.2, 2.2) * ease) * rng.choice([-1, 1])
    elif kind == "angulated":
        fracture.tilt = math.radians(rng.uniform(6, 25) * (0.4 + ease)) * rng.choice([-1, 1])
    elif kind == "impacted":
        fracture.overlap = max(radius_pixels * rng.uniform(0.3, 0.7) * (0.4 + ease), input_pixel * 1.2 * ease)
        fracture.depth *= 0.5
    return fracture


def look_alikes(rng: np.random.Generator, anatomy: Anatomy, scale: float, child: bool,
                difficulty: float) -> dict[int, list[Fracture]]:
    """Lucent lines that are not fractures, per bone: a child's growth plates, nutrient canals."""
    lines: dict[int, list[Fracture]] = {}
    # About 0.3 nutrient canals per film at difficulty 0, 0.9 at difficulty 1.
    for number, bone in enumerate(anatomy.bones):
        radius = bone.radius * scale
        if child:
            # Growth plates: smooth, wavy bands straight across both metaphyses.
            for site in (0.07, 0.93):
                lines.setdefault(number, []).append(Fracture(
                    "physis", site + rng.normal(0, 0.01), math.radians(rng.normal(0, 5)), max(1.5, radius * 0.25),
                    rng.uniform(0.3, 0.55), 1.0, 1, zigzag=radius * 0.08, phase=float(rng.uniform(0, 6.3))))
        if rng.random() < (0.3 + 0.6 * difficulty) / len(anatomy.bones):
            # A nutrient canal: a short, faint oblique line through one cortex of the shaft.
            lines.setdefault(number, []).append(Fracture(
                "canal", rng.uniform(0.35, 0.65), math.radians(rng.uniform(45, 65)) * rng.choice([-1, 1]),
                max(1.0, radius * 0.12), rng.uniform(0.25, 0.5), rng.uniform(0.15, 0.3), int(rng.choice([-1, 1])),
                zigzag=0.0))
    return lines


def fracture_box(start: np.ndarray, end: np.ndarray, radius: float, bone: Bone,
                 fracture: Fracture) -> tuple[float, float, float, float]:
    """The pixel box (x_min, y_min, x_max, y_max) around a fracture and the fragments' ends there."""
    length = max(float(np.hypot(*(end - start))), 1e-3)
    direction = (end - start) / length
    normal = np.array([-direction[1], direction[0]])
    site = start + direction * fracture.site * length
    half_width = radius * (1.0 + bone.flare * 0.5) + 0.3 * radius
    reach = half_width + abs(math.tan(fracture.obliquity)) * half_width + fracture.gap
    corners = [site + sign_a * direction * reach * 0.6 + sign_b * normal * half_width
               for sign_a in (-1, 1) for sign_b in (-1, 1)]
    corners += [corner + normal * fracture.shift for corner in corners]
    stacked = np.array(corners)
    return (float(stacked[:, 0].min()), float(stacked[:, 1].min()),
            float(stacked[:, 0].max()), float(stacked[:, 1].max()))


def draw_hardware(metal: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float,
                  rng: np.random.Generator, site: float) -> None:
    """A plate with screws along a bone centred at ``site`` (0..1), or crossed wires."""
    length = max(float(np.hypot(*(end - start))), 1e-3)
    direction = (end - start) / length
    normal = np.array([-direction[1], direction[0]])
    centre = start + direction * length * site
    if rng.random() < 0.7:
        # A plate on one cortex, and screws across the bone through it.
        side = rng.choice([-1, 1])
        half = min(length * rng.uniform(0.18, 0.3), length * min(site, 1 - site) + radius)
        plate_width = max(2.0, radius * rng.uniform(0.35, 0.5))
        plate_centre = centre + side * normal * (radius * 1.05 + plate_width / 2)
        corners = [plate_centre + sign_a * direction * half + sign_b * normal * plate_width / 2
                   for sign_a, sign_b in ((-1, -1), (-1, 1), (1, 1), (1, -1))]
        cv2.fillPoly(metal, [np.round(np.array(corners)).astype(np.int32)], 1.0, cv2.LINE_AA)
        screws = int(rng.integers(3, 7))
        for position in np.linspace(-half * 0.85, half * 0.85, screws):
            head = plate_centre + direction * position + side * normal * plate_width * 0.6
            tip = head - side * normal * (radius * 2.2 + plate_width)
            cv2.line(metal, tuple(np.round(head).astype(int)), tuple(np.round(tip).astype(int)), 0.8,
                     max(1, int(round(radius * 0.28))), cv2.LINE_AA)
            cv2.circle(metal, tuple(np.round(head).astype(int)), max(1, int(round(radius * 0.3))), 1.0, -1,
                       cv2.LINE_AA)
    else:
        # Kirschner wires: thin pins crossing the bone obliquely.
        for _ in range(int(rng.integers(1, 4))):
            angle = math.radians(rng.uniform(15, 40)) * rng.choice([-1, 1])
            pin = rotate(direction, angle)
            reach = radius * rng.uniform(3, 6)
            first = centre - pin * reach + direction * rng.normal(0, radius)
            cv2.line(metal, tuple(np.round(first).astype(int)), tuple(np.round(first + 2 * pin * reach).astype(int)),
                     0.9, max(1, int(round(radius * 0.15))), cv2.LINE_AA)
