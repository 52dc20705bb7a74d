"""Radiograph phantoms: X-ray projections of bones, soft tissue and hardware, drawn from anatomy.

Each body part is a set of long bones (tubes with a cortical shell, a medullary cavity and flared
ends), ellipsoidal bones (carpals, condyles, the humeral head) and a soft-tissue envelope. The
renderer sums the path length of the beam through each material, as a projection radiograph
does: a tube's cortex is brightest at its edges, its medulla darker and textured like trabecular
bone, overlapping bones add up. Then the film is exposed: scatter, the heel effect, blur, the
unsharp masking of digital radiography, quantum noise, collimation and the L/R marker.

The findings (``fracture_lib.findings``: fractures, look-alike lines, hardware) are projected in
the same coordinates, with soft-tissue swelling around most fractures. ``difficulty`` (0 to 1)
makes fractures subtler and the film noisier and blurrier. Output depends only on the random
generator passed in.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fracture_lib import findings
from fracture_lib.anatomy import ANATOMY, Anatomy, Bone
from fracture_lib.findings import Fracture

# Share of views coned down onto one bone (magnified 1.8-2.6 times): the bone breaks there when the
# study is abnormal, and the body part is harder to tell.
CONED_VIEW_SHARE = 0.1
# Attenuation per unit of path (normalised image units) of each material, as brightness rates.
TISSUE_ATTENUATION = 1.6
CORTEX_ATTENUATION = 9.0
MEDULLA_ATTENUATION = 3.2
METAL_ATTENUATION = 60.0


# ---------------------------------------------------------------------------------------------
# Projection of bones and tissue
# ---------------------------------------------------------------------------------------------

def _grid(points: list[np.ndarray], pad: float, shape: tuple[int, int]):
    """The pixel grid (x, y) of the box around ``points`` grown by ``pad``, and its slices."""
    stacked = np.array(points)
    x0 = max(0, int(math.floor(stacked[:, 0].min() - pad)))
    y0 = max(0, int(math.floor(stacked[:, 1].min() - pad)))
    x1 = min(shape[1], int(math.ceil(stacked[:, 0].max() + pad)) + 1)
    y1 = min(shape[0], int(math.ceil(stacked[:, 1].max() + pad)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    xx, yy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
    return xx, yy, (slice(y0, y1), slice(x0, x1))


def _along_across(xx: np.ndarray, yy: np.ndarray, start: np.ndarray, end: np.ndarray):
    """Coordinates of each pixel along the segment (from ``start``) and across it; its length."""
    vector = end - start
    length = max(float(np.hypot(*vector)), 1e-3)
    direction = vector / length
    x, y = xx - np.float32(start[0]), yy - np.float32(start[1])
    return x * direction[0] + y * direction[1], x * -direction[1] + y * direction[0], length


def _tube_paths(u: np.ndarray, v: np.ndarray, length: float, radius: float, flare: float, cortex: float,
                bulge: tuple[float, float, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Beam path lengths through a long bone's cortex and medulla at coordinates (u, v).

    The radius widens towards the ends (metaphyses), where the cortex thins, and the ends are
    rounded. ``bulge`` (site 0..1, height in pixels, side) raises one cortex locally (a buckle).
    """
    s = np.clip(u / length, 0.0, 1.0)
    end_weight = np.exp(-(s / 0.14) ** 2) + np.exp(-((1.0 - s) / 0.14) ** 2)
    outer = radius * (1.0 + flare * end_weight)
    if bulge is not None:
        site, height, side = bulge
        outer = outer + height * np.exp(-((s - site) * length / (1.6 * radius)) ** 2) * (side * v > 0)
    cap = radius * (1.0 + flare) * 0.8
    overshoot = np.maximum(-u, 0.0) + np.maximum(u - length, 0.0)
    outer = outer * np.sqrt(np.clip(1.0 - (overshoot / cap) ** 2, 0.0, 1.0))
    inner = np.maximum(outer - radius * cortex * (1.0 - 0.6 * np.minimum(end_weight, 1.0)), 0.0)
    v2 = v * v
    outer_chord = 2.0 * np.sqrt(np.maximum(outer * outer - v2, 0.0))
    inner_chord = 2.0 * np.sqrt(np.maximum(inner * inner - v2, 0.0))
    return outer_chord - inner_chord, inner_chord


def _fracture_line(u: np.ndarray, v: np.ndarray, length: float, fracture: Fracture) -> np.ndarray:
    """Signed distance (pixels along the bone) from each pixel to the jagged fracture line."""
    period = max(4.0, 0.9 * abs(fracture.zigzag) + 6.0)
    cut = (fracture.site * length + math.tan(fracture.obliquity) * v
           + fracture.zigzag * (np.sin(v / period * 2 * math.pi + fracture.phase)
                                + 0.5 * np.sin(v / period * 5.3 + 2 * fracture.phase)))
    return u - cut


def _line_mask(u: np.ndarray, v: np.ndarray, length: float, radius: float, line: Fracture) -> np.ndarray:
    """How much of a lucent line that leaves the bone in place covers each pixel (0..1)."""
    reach = np.clip((line.side * v - radius * (1.0 - 2.0 * line.extent)) + 0.5, 0.0, 1.0)
    return np.clip(line.gap / 2 + 0.5 - np.abs(_fracture_line(u, v, length, line)), 0.0, 1.0) * reach


def _bone_attenuation(xx, yy, start, end, radius, bone: Bone, texture, fracture: Fracture | None,
                      lines: list[Fracture]):
    """Cortical plus textured medullary attenuation of one long bone over a pixel grid.

    ``lines`` are lucent lines that are not fractures (growth plates, nutrient canals).
    """
    u, v, length = _along_across(xx, yy, start, end)
    bulge = None
    if fracture is not None and fracture.kind == "buckle":
        bulge = (fracture.site, radius * (0.25 + 0.3 * fracture.depth), fracture.side)
    cortical, medullary = _tube_paths(u, v, length, radius, bone.flare, bone.cortex, bulge)
    s = np.clip(u / length, 0.0, 1.0)
    trabecular = 1.0 + texture * (0.5 + 0.7 * (np.exp(-(s / 0.2) ** 2) + np.exp(-((1 - s) / 0.2) ** 2)))
    attenuation = CORTEX_ATTENUATION * cortical + MEDULLA_ATTENUATION * medullary * trabecular
    for line in lines:
        attenuation = attenuation * (1.0 - line.depth * _line_mask(u, v, length, radius, line))
    if fracture is None or fracture.kind == "buckle":
        return attenuation
    if fracture.shift == 0.0 and fracture.tilt == 0.0 and fracture.overlap == 0.0:
        # A line through the bone that leaves it in place: hairline or incomplete.
        return attenuation * (1.0 - fracture.depth * _line_mask(u, v, length, radius, fracture))
    # A complete break: the proximal fragment up to the line, and the distal one moved.
    distance = _fracture_line(u, v, length, fracture)
    proximal = attenuation * np.clip(-distance - fracture.gap / 2 + 0.5, 0.0, 1.0)
    site_u = fracture.site * length
    moved_u, moved_v = u - (site_u - fracture.overlap), v - fracture.shift
    cosine, sine = math.cos(-fracture.tilt), math.sin(-fracture.tilt)
    distal_u = cosine * moved_u - sine * moved_v + site_u
    distal_v = sine * moved_u + cosine * moved_v
    cortical, medullary = _tube_paths(distal_u, distal_v, length, radius, bone.flare, bone.cortex)
    distal = CORTEX_ATTENUATION * cortical + MEDULLA_ATTENUATION * medullary * (1.0 + 0.5 * texture)
    distal_distance = _fracture_line(distal_u, distal_v, length, fracture)
    distal = distal * np.clip(distal_distance - fracture.gap / 2 + 0.5, 0.0, 1.0)
    return proximal + distal


def _capsule_chord(xx, yy, start, end, radius) -> np.ndarray:
    """Path length through a round capsule of soft tissue."""
    u, v, length = _along_across(xx, yy, start, end)
    along = np.maximum(-u, 0.0) + np.maximum(u - length, 0.0)
    return 2.0 * np.sqrt(np.maximum(radius * radius - v * v - along * along, 0.0))


def _ellipse_chord(xx, yy, centre, axes, angle_degrees, depth: float | None = None) -> np.ndarray:
    """Path length through an ellipsoid seen from above; its ``depth`` defaults to its smaller axis."""
    angle = math.radians(angle_degrees)
    x, y = xx - np.float32(centre[0]), yy - np.float32(centre[1])
    a = (x * math.cos(angle) + y * math.sin(angle)) / axes[0]
    b = (-x * math.sin(angle) + y * math.cos(angle)) / axes[1]
    return (2.0 * min(axes) if depth is None else depth) * np.sqrt(np.maximum(1.0 - a * a - b * b, 0.0))


def _band_noise(rng: np.random.Generator, shape: tuple[int, int], fine: float, coarse: float) -> np.ndarray:
    """Noise between two spatial scales (pixels), scaled to unit spread: trabecular texture."""
    white = rng.standard_normal(shape, dtype=np.float32)
    band = cv2.GaussianBlur(white, (0, 0), fine) - cv2.GaussianBlur(white, (0, 0), coarse)
    return band / max(float(band.std()), 1e-6)


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur, computed on a quarter-size copy because only the smooth shape matters."""
    height, width = image.shape
    small = cv2.resize(image, (max(1, width // 4), max(1, height // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(0.5, sigma / 4))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------
# The film
# ---------------------------------------------------------------------------------------------

def _placement(rng: np.random.Generator, width: int, height: int, zoom: float = 1.0,
               anchor: np.ndarray | None = None) -> np.ndarray:
    """A random placement (rotation up to 15 degrees, zoom, shift) from 0..1 to pixels.

    ``anchor`` (normalised coordinates, default the middle) lands near the film's centre.
    """
    scale = min(width, height) * rng.uniform(0.8, 1.25) * zoom
    angle = math.radians(rng.uniform(-15, 15))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
    centre = np.array([width / 2 + rng.normal(0, width * 0.05), height / 2 + rng.normal(0, height * 0.05)])
    anchor = np.array([0.5, 0.5]) if anchor is None else anchor
    return np.hstack([rotation, (centre - rotation @ anchor)[:, None]])


def _breakable(anatomy: Anatomy) -> list[int]:
    """The numbers of the bones that can break (a ``fracture_weight`` above 0)."""
    return [number for number, bone in enumerate(anatomy.bones) if bone.fracture_weight > 0]


def _draw_bone(rng: np.random.Generator, anatomy: Anatomy, numbers: list[int]) -> int:
    """One of the bones ``numbers``, drawn in proportion to their ``fracture_weight``."""
    weights = np.array([anatomy.bones[number].fracture_weight for number in numbers])
    return int(rng.choice(numbers, p=weights / weights.sum()))


def _to_pixels(matrix: np.ndarray, point: np.ndarray) -> np.ndarray:
    return matrix[:, :2] @ point + matrix[:, 2]


def _draw_ribs(layer: np.ndarray, matrix: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Rib arcs on the medial side of a shoulder film, each a thin shell of bone."""
    scale = float(np.hypot(*matrix[:, 0]))
    for rib in range(count):
        centre = _to_pixels(matrix, np.array([0.05 + rng.normal(0, 0.02), 0.35 + 0.17 * rib]))
        axes = (int(scale * rng.uniform(0.45, 0.6)), int(scale * rng.uniform(0.12, 0.18)))
        thickness = max(2, int(scale * 0.03))
        cv2.ellipse(layer, tuple(np.round(centre).astype(int)), axes, rng.uniform(-25, -5), -80, 60, 1.0,
                    thickness, cv2.LINE_AA)
        cv2.ellipse(layer, tuple(np.round(centre).astype(int)), axes, rng.uniform(-25, -5), -80, 60, 0.55,
                    max(1, thickness // 2), cv2.LINE_AA)


def render_view(rng: np.random.Generator, part: str, view: int, finding: str,
                difficulty: float = findings.DEFAULT_DIFFICULTY, child: bool = False) -> tuple[np.ndarray, tuple | None, str]:
    """Draw one radiograph of ``part`` showing ``finding``; a ``child`` has open growth plates.

    ``finding`` is "none", "fracture", "hardware" or "fracture+plate". Returns the 8-bit film,
    the fracture's box in pixels (None when no fracture is visible on the film) and the finding
    drawn, with the fracture kind spelled out ("buckle", "displaced+plate", ...). Some parts are
    drawn easier than ``difficulty`` (``findings.PART_EASE``).
    """
    difficulty = findings.part_difficulty(part, difficulty)
    long_side = int(rng.integers(300, 513))
    ratio = rng.uniform(0.55, 0.9)
    width, height = (long_side, int(long_side * ratio)) if rng.random() < 0.2 else (int(long_side * ratio), long_side)
    shape = (height, width)
    anatomy = ANATOMY[part](rng, view)
    # A few views are coned down onto one bone, as spot views of an injury site are; drawn from
    # the film's own stream, so that a view looks the same with and without its finding.
    coned = None
    if rng.random() < CONED_VIEW_SHARE:
        coned = _draw_bone(rng, anatomy, _breakable(anatomy))
        bone = anatomy.bones[coned]
        matrix = _placement(rng, width, height, rng.uniform(1.8, 2.6), (bone.start + bone.end) / 2)
    else:
        matrix = _placement(rng, width, height)
    scale = float(np.hypot(*matrix[:, 0]))
    # Separate streams for the finding and the film's texture and noise, so that the same view
    # can be drawn with and without a finding.
    finding_rng = np.random.default_rng(rng.integers(0, 2 ** 63))
    film_rng = np.random.default_rng(rng.integers(0, 2 ** 63))

    # Soft tissue: the thickest envelope at each pixel (one continuous body).
    tissue = np.zeros(shape, np.float32)
    for start, end, radius in anatomy.tissue_capsules:
        a, b = _to_pixels(matrix, start), _to_pixels(matrix, end)
        grid = _grid([a, b], radius * scale, shape)
        if grid is not None:
            xx, yy, box = grid
            tissue[box] = np.maximum(tissue[box], _capsule_chord(xx, yy, a, b, radius * scale))
    for centre, axes, angle, depth in anatomy.tissue_ellipses:
        c = _to_pixels(matrix, centre)
        grid = _grid([c], max(axes) * scale, shape)
        if grid is not None:
            xx, yy, box = grid
            film_angle = angle + math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
            tissue[box] = np.maximum(tissue[box], _ellipse_chord(xx, yy, c, (axes[0] * scale, axes[1] * scale),
                                                                 film_angle, depth * scale))

    # The finding: which bone, which fracture, whether metal is in the film.
    kind = findings.NO_FINDING
    fracture, chosen = None, -1
    if finding.startswith("fracture") or finding == findings.HARDWARE:
        candidates = _breakable(anatomy)
        visible = [number for number in candidates
                   if _inside(_to_pixels(matrix, (anatomy.bones[number].start + anatomy.bones[number].end) / 2),
                              shape, anatomy.bones[number].radius * scale * 2)] or candidates
        chosen = _draw_bone(finding_rng, anatomy, visible) if coned is None else coned
    if finding.startswith("fracture"):
        fracture = findings.draw_fracture(finding_rng, anatomy.bones[chosen].radius * scale, difficulty,
                                          long_side / findings.REFERENCE_INPUT_SIZE)
        kind = fracture.kind

    texture = _band_noise(film_rng, shape, 0.9, 3.5) * film_rng.uniform(0.25, 0.45)
    look_alikes = findings.look_alikes(film_rng, anatomy, scale, child, difficulty)
    bone_attenuation = np.zeros(shape, np.float32)
    box = None
    for number, bone in enumerate(anatomy.bones):
        a, b = _to_pixels(matrix, bone.start), _to_pixels(matrix, bone.end)
        radius = bone.radius * scale
        this_fracture = fracture if number == chosen else None
        pad = radius * (1.0 + bone.flare) * 1.3 + 2
        if this_fracture is not None:
            pad += abs(this_fracture.shift) + abs(this_fracture.tilt) * float(np.hypot(*(b - a)))
            box = findings.fracture_box(a, b, radius, bone, this_fracture)
        grid = _grid([a, b], pad, shape)
        if grid is None:
            continue
        xx, yy, region = grid
        bone_attenuation[region] += _bone_attenuation(xx, yy, a, b, radius, bone, texture[region], this_fracture,
                                                      look_alikes.get(number, []))
    for blob in anatomy.blobs:
        c = _to_pixels(matrix, blob.centre)
        axes = (blob.axes[0] * scale, blob.axes[1] * scale)
        grid = _grid([c], max(axes), shape)
        if grid is None:
            continue
        xx, yy, region = grid
        angle = blob.angle_degrees + math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
        outer = _ellipse_chord(xx, yy, c, axes, angle)
        shell = max(1.0, min(axes) * blob.cortex)
        inner = _ellipse_chord(xx, yy, c, (max(axes[0] - shell, 0.5), max(axes[1] - shell, 0.5)), angle)
        bone_attenuation[region] += blob.density * (
            CORTEX_ATTENUATION * 0.6 * (outer - inner) + MEDULLA_ATTENUATION * inner * (1.0 + 0.5 * texture[region]))
    if anatomy.ribs:
        ribs = np.zeros(shape, np.float32)
        _draw_ribs(ribs, matrix, anatomy.ribs, film_rng)
        bone_attenuation += cv2.GaussianBlur(ribs, (0, 0), 1.0) * scale * 0.02 * CORTEX_ATTENUATION
        # The lung field: air on the medial side lowers the attenuation there.
        lung = np.zeros(shape, np.float32)
        cv2.ellipse(lung, tuple(np.round(_to_pixels(matrix, np.array([-0.05, 0.75]))).astype(int)),
                    (int(scale * 0.35), int(scale * 0.5)), 0, 0, 360, 1.0, -1)
        tissue = np.maximum(tissue - _smooth(lung, scale * 0.08) * scale * 0.15, 0.0)

    # Soft-tissue swelling (a haematoma) around most fractures, less often when subtle; a few
    # normal studies have some too.
    swelling_site = None
    if box is not None and finding_rng.random() < 0.85 - 0.5 * difficulty:
        swelling_site = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    elif box is None and finding_rng.random() < 0.1 + 0.1 * difficulty:
        bone = anatomy.bones[int(finding_rng.integers(0, len(anatomy.bones)))]
        swelling_site = _to_pixels(matrix, bone.start + finding_rng.uniform(0.3, 0.7) * (bone.end - bone.start))
    if swelling_site is not None:
        swelling = np.zeros(shape, np.float32)
        size = max(6.0, 0.07 * scale) * finding_rng.uniform(0.9, 1.5)
        cv2.circle(swelling, tuple(np.round(swelling_site).astype(int)), int(size), 1.0, -1, cv2.LINE_AA)
        tissue += _smooth(swelling, size * 0.5) * size * (1.0 - 0.75 * difficulty)

    metal = np.zeros(shape, np.float32)
    if finding == findings.HARDWARE or finding.endswith("+plate"):
        bone = anatomy.bones[chosen]
        site = fracture.site if fracture is not None else float(finding_rng.uniform(0.3, 0.7))
        findings.draw_hardware(metal, _to_pixels(matrix, bone.start), _to_pixels(matrix, bone.end),
                               bone.radius * scale, finding_rng, site)
        kind = findings.HARDWARE if fracture is None else f"{kind}+plate"

    # Exposure: the brightness of a film rises with the attenuation along each ray, saturating
    # for metal; scatter adds haze, the anode heel effect a gradient across the film.
    attenuation = (TISSUE_ATTENUATION * tissue + bone_attenuation) / scale + METAL_ATTENUATION * metal
    image = 1.0 - np.exp(-attenuation * film_rng.uniform(0.85, 1.15))
    background = film_rng.uniform(0.03, 0.12)
    image = background + (film_rng.uniform(0.62, 0.85) - background) * image
    scatter = film_rng.uniform(0.1, 0.25)
    image = (1 - scatter) * image + scatter * _smooth(image, 0.08 * long_side)
    heel = np.linspace(1.0 + film_rng.uniform(-0.08, 0.08), 1.0 + film_rng.uniform(-0.08, 0.08), height, dtype=np.float32)
    image = image * heel[:, None]
    image = cv2.GaussianBlur(image, (0, 0), sigmaX=film_rng.uniform(0.5, 1.0) + 0.3 * difficulty)
    # Digital radiographs are processed with unsharp masking, which enhances edges.
    image = image + film_rng.uniform(0.3, 0.8) * (image - _smooth(image, 0.04 * long_side))
    image = np.clip(image, 0.0, 1.0) ** film_rng.uniform(0.85, 1.2)
    noise = film_rng.uniform(0.012, 0.025) * (1.0 + 0.6 * difficulty)
    image = image + noise * np.sqrt(np.clip(image, 0.02, 1.0)) * film_rng.standard_normal(shape, dtype=np.float32)

    _collimate(image, film_rng)
    pixels = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    _mark(pixels, film_rng, long_side)
    if box is not None:
        box = (max(0.0, box[0]), max(0.0, box[1]), min(width - 1.0, box[2]), min(height - 1.0, box[3]))
        # A fracture that lies off the film is not visible on this view: no box.
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            box = None
    return pixels, box, kind


def _inside(point: np.ndarray, shape: tuple[int, int], margin: float) -> bool:
    """Whether ``point`` lies at least ``margin`` pixels inside a film of ``shape`` (height, width)."""
    return margin <= point[0] <= shape[1] - 1 - margin and margin <= point[1] <= shape[0] - 1 - margin


def _collimate(image: np.ndarray, rng: np.random.Generator) -> None:
    """Collimation: uniform bands with sharp edges on some sides, dark or light."""
    height, width = image.shape
    value = rng.uniform(0.0, 0.1) if rng.random() < 0.7 else rng.uniform(0.55, 0.8)
    for side in range(4):
        if rng.random() < 0.35:
            depth = int(rng.uniform(0.03, 0.1) * (width if side % 2 else height))
            if side == 0:
                image[:depth] = value
            elif side == 1:
                image[:, width - depth:] = value
            elif side == 2:
                image[height - depth:] = value
            else:
                image[:, :depth] = value


def _mark(pixels: np.ndarray, rng: np.random.Generator, long_side: int) -> None:
    """The L/R marker and the technologist's initials, as on real films."""
    height, width = pixels.shape
    font = cv2.FONT_HERSHEY_SIMPLEX
    marker_scale = long_side / 400
    corner = (int(rng.uniform(0.05, 0.2) * width), int(rng.uniform(0.08, 0.2) * height))
    cv2.putText(pixels, str(rng.choice(["L", "R"])), corner, font, 1.1 * marker_scale, 247,
                max(1, int(2 * marker_scale)), cv2.LINE_AA)
    initials = "".join(rng.choice(list("ABCDEGHJKLMNPRSTW"), 2))
    cv2.putText(pixels, initials, (int(width * 0.7), int(height * 0.94)), font, 0.45 * marker_scale, 217, 1,
                cv2.LINE_AA)
