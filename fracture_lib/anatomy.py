"""Anatomy of the demo phantoms: the bones and soft tissue of one view, per body part.

Coordinates are normalised (x, y in 0..1 of the film before placement); ``fracture_lib.phantoms``
places, projects and exposes them. Sizes follow adult anatomy roughly: a forearm bone is a
quarter of the forearm's soft-tissue width, a metacarpal a third of a finger's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


HAND_ZOOM = 1.7  # the hand's size on the film relative to the unit sizes written in ``hand``


@dataclass
class Bone:
    """A long bone from ``start`` to ``end`` (normalised coordinates, 0..1 of the film)."""

    start: np.ndarray
    end: np.ndarray
    radius: float  # shaft radius
    flare: float = 0.45  # how much wider the metaphyses are than the shaft
    cortex: float = 0.32  # cortical thickness in the shaft, as a share of the radius
    fracture_weight: float = 1.0  # relative chance that this bone is the broken one (0: never)


@dataclass
class Blob:
    """An ellipsoidal bone (a carpal, a condyle, the humeral head)."""

    centre: np.ndarray
    axes: tuple[float, float]
    angle_degrees: float
    cortex: float = 0.18
    density: float = 1.0


@dataclass
class Anatomy:
    """What one view shows: bones, and the soft tissue as capsules and ellipses."""

    bones: list[Bone]
    blobs: list[Blob]
    tissue_capsules: list[tuple[np.ndarray, np.ndarray, float]]
    # Each ellipse: centre, half axes, angle in degrees and its depth along the beam.
    tissue_ellipses: list[tuple[np.ndarray, tuple[float, float], float, float]]
    ribs: int = 0  # shoulder films: rib arcs and a lung field on the medial side


# ---------------------------------------------------------------------------------------------
# Each function returns one view in normalised coordinates (x, y in 0..1 of the film).
# ---------------------------------------------------------------------------------------------

def rotate(vector: np.ndarray, angle: float) -> np.ndarray:
    """``vector`` turned by ``angle`` radians."""
    cosine, sine = math.cos(angle), math.sin(angle)
    return np.array([cosine * vector[0] - sine * vector[1], sine * vector[0] + cosine * vector[1]])


def elbow(rng: np.random.Generator, view: int) -> Anatomy:
    """Humerus meeting radius and ulna; lateral views flex the elbow."""
    joint = np.array([0.5 + rng.normal(0, 0.04), 0.5 + rng.normal(0, 0.04)])
    flexion = math.radians(rng.uniform(0, 15) if view % 2 == 1 else rng.uniform(35, 95))
    humerus_angle = math.radians(-90 + rng.normal(0, 7))
    humerus_direction = np.array([math.cos(humerus_angle), math.sin(humerus_angle)])
    forearm_angle = math.radians(90 + rng.normal(0, 6)) - flexion * rng.choice([-1, 1])
    direction = np.array([math.cos(forearm_angle), math.sin(forearm_angle)])
    normal = np.array([-direction[1], direction[0]])
    humerus = Bone(joint + 0.62 * humerus_direction, joint + 0.045 * humerus_direction, 0.042, flare=0.9)
    radius = Bone(joint + 0.035 * normal + 0.05 * direction, joint + 0.05 * normal + 0.62 * direction, 0.024,
                  flare=0.5)
    ulna = Bone(joint - 0.035 * normal - 0.005 * direction, joint - 0.04 * normal + 0.62 * direction, 0.026,
                flare=0.45)
    blobs = [Blob(joint + 0.005 * humerus_direction, (0.085, 0.045), math.degrees(humerus_angle) + 90, density=0.9),
             Blob(joint - 0.04 * normal - 0.025 * direction, (0.035, 0.03), rng.uniform(0, 180), density=0.85),
             Blob(joint + 0.035 * normal + 0.03 * direction, (0.03, 0.022), math.degrees(forearm_angle), density=0.8)]
    tissue = [(humerus.start, joint, 0.14 + rng.normal(0, 0.01)),
              (joint, joint + 0.62 * direction, 0.11 + rng.normal(0, 0.01))]
    return Anatomy([humerus, radius, ulna], blobs, tissue, [(joint, (0.13, 0.12), 0.0, 0.24)])


def hand(rng: np.random.Generator, view: int) -> Anatomy:
    """Distal forearm, carpal bones, five metacarpals fanning out and the phalanges."""
    # The hand fills most of the film's width, as on a real PA film; sizes below are for zoom 1.
    zoom = HAND_ZOOM
    wrist = np.array([0.5 + rng.normal(0, 0.03), 0.92 + rng.normal(0, 0.02)])
    spread = rng.uniform(0.7, 1.15) * (0.55 if view % 3 == 2 else 1.0)  # an oblique view narrows the fan
    tilt = math.radians(rng.normal(0, 5))
    offset = lambda x, y: wrist + rotate(np.array([x, y]) * zoom, tilt)  # noqa: E731 - a local placement rule
    # Which bone breaks follows the common injuries seen on a hand film: the distal radius, the
    # metacarpals (the fifth most often, a boxer's fracture), less often a proximal phalanx.
    bones = [Bone(offset(-0.05, 0.32), offset(-0.045, 0.07), 0.03 * zoom, flare=0.7, fracture_weight=2.0),  # radius
             Bone(offset(0.06, 0.32), offset(0.055, 0.08), 0.022 * zoom, flare=0.4, fracture_weight=0.6)]  # ulna
    blobs = [Blob(offset((column - 1.5) * 0.036, -0.01 - row * 0.034), (0.019 * zoom, 0.016 * zoom), rng.uniform(0, 180),
                  density=0.85) for row in range(2) for column in range(4)]
    tissue_capsules = [(offset(0.0, 0.4), offset(0.0, 0.02), 0.11 * zoom)]
    # The palm is flat: about three metacarpals thick.
    tissue_ellipses = [(offset(0.0, -0.11), (0.12 * zoom, 0.1 * zoom), math.degrees(tilt), 0.12 * zoom)]
    for finger in range(5):
        angle = -math.pi / 2 + tilt + math.radians((finger - 2) * 8 * spread + rng.normal(0, 2))
        if finger == 0:
            angle = -math.pi / 2 + tilt - math.radians(40 * spread + rng.normal(0, 4))
        base = offset((finger - 2) * 0.036 + (-0.02 if finger == 0 else 0.0), -0.065)
        lengths = [0.17, 0.1, 0.065, 0.05] if finger else [0.11, 0.08, 0.06]
        widths = [0.014, 0.013, 0.011, 0.009] if finger else [0.016, 0.013, 0.011]
        position, finger_start = base, base
        for segment, (length, width) in enumerate(zip(lengths, widths)):
            # Fingers curl slightly; each joint leaves a narrow space.
            angle += math.radians(rng.normal(0, 3) + segment * rng.uniform(0, 4))
            direction = np.array([math.cos(angle), math.sin(angle)])
            end = position + length * zoom * direction
            weight = (1.6 if finger == 4 else 0.8) if segment == 0 else (0.3 if segment == 1 else 0.0)
            bones.append(Bone(position, end, width * zoom, flare=0.55, cortex=0.3, fracture_weight=weight))
            position = end + 0.011 * zoom * direction
        tissue_capsules.append((finger_start, position, (0.026 if finger else 0.03) * zoom))
    return Anatomy(bones, blobs, tissue_capsules, tissue_ellipses)


def shoulder(rng: np.random.Generator, view: int) -> Anatomy:
    """Humeral head and shaft, glenoid, clavicle, acromion, ribs and the lung field."""
    head = np.array([0.55 + rng.normal(0, 0.04), 0.4 + rng.normal(0, 0.04)])
    shaft_angle = math.radians(95 + rng.normal(0, 7) + (22 if view % 2 == 0 else 0))
    direction = np.array([math.cos(shaft_angle), math.sin(shaft_angle)])
    clavicle_y = head[1] - 0.2 + rng.normal(0, 0.025)
    bones = [Bone(head + 0.07 * direction, head + 0.75 * direction, 0.05, flare=0.8),  # humeral neck and shaft
             Bone(np.array([-0.05, clavicle_y + 0.08]), np.array([0.62, clavicle_y]), 0.028, flare=0.4),  # clavicle
             Bone(np.array([0.62, clavicle_y + 0.01]), np.array([0.8, clavicle_y + 0.06]), 0.03, flare=0.3,
                  fracture_weight=0.0)]  # acromion
    blobs = [Blob(head, (0.1, 0.11), rng.uniform(-10, 10), cortex=0.1, density=0.95),  # humeral head
             Blob(head + np.array([-0.13, 0.02]), (0.03, 0.085), 10.0, density=0.8),  # glenoid
             Blob(head + np.array([-0.22, 0.12]), (0.06, 0.2), 15.0, cortex=0.08, density=0.5)]  # scapular body
    tissue = [(head + 0.05 * direction, head + 0.8 * direction, 0.15), (head, np.array([-0.2, head[1]]), 0.26)]
    return Anatomy(bones, blobs, tissue, [(head, (0.2, 0.22), 0.0, 0.4)], ribs=int(rng.integers(3, 6)))


ANATOMY = {"elbow": elbow, "hand": hand, "shoulder": shoulder}
