"""Small data sources the tests write themselves: a FracAtlas-shaped folder and manifests.

The FracAtlas fixture has the official layout and every quirk of the real set in miniature: two
byte-identical films, a film whose folder and ``fractured`` flag disagree, a truncated JPEG, a
film of several body parts and a COCO file of fracture outlines.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

HEADER = "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique"
# Films per (part, fractured): enough for every split of the 70/10/20 split to hold both labels.
FILMS = {("hand", 1): 14, ("hand", 0): 22, ("leg", 1): 12, ("leg", 0): 22}
# The identifiers of the quirks.
DUPLICATE_OF = ("IMG0000900.jpg", "IMG0000015.jpg")  # (copy, original): a normal hand film twice
CONTRADICTION = "IMG0000001.jpg"   # in Fractured/ but flagged 0 in dataset.csv
TRUNCATED = "IMG0000901.jpg"       # a normal leg film cut short
MIXED = "IMG0000902.jpg"           # hand and shoulder on one film


def film(rng: np.random.Generator, fractured: bool, part: str, height: int = 96, width: int = 80) -> tuple[np.ndarray, list[float]]:
    """A grey film with a bright 'bone'; a fractured one has a dark gap across it. Returns (image, polygon)."""
    image = rng.normal(40, 8, (height, width)).clip(0, 255)
    column = int(rng.integers(25, 55))
    thickness = 10 if part == "hand" else 16
    image[10:height - 10, column - thickness // 2:column + thickness // 2] = rng.normal(200, 10)
    row = int(rng.integers(30, 65))
    polygon = [column - thickness, row - 3, column + thickness, row - 3, column + thickness, row + 3, column - thickness, row + 3]
    if fractured:
        image[row - 2:row + 2, column - thickness // 2:column + thickness // 2] = 30
    return image.astype(np.uint8), [float(value) for value in polygon]


def write_jpeg(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` as a JPEG file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    path.write_bytes(buffer.tobytes())


def write_fracatlas(root: Path, seed: int = 0) -> Path:
    """Write a tiny FracAtlas in its official layout under ``root``; return ``root``."""
    rng = np.random.default_rng(seed)
    rows, coco_images, coco_annotations = [], [], []
    number = 0

    def add(part_flags: dict[str, int], fractured: int, folder_fractured: int, name: str | None = None,
            part: str = "hand") -> str:
        nonlocal number
        image_id = name or f"IMG{number:07d}.jpg"
        number += 1
        image, polygon = film(rng, bool(folder_fractured), part)
        folder = "Fractured" if folder_fractured else "Non_fractured"
        write_jpeg(root / "images" / folder / image_id, image)
        flags = {key: part_flags.get(key, 0) for key in ("hand", "leg", "hip", "shoulder", "mixed")}
        rows.append(f"{image_id},{flags['hand']},{flags['leg']},{flags['hip']},{flags['shoulder']},{flags['mixed']},"
                    f"0,0,{fractured},{folder_fractured},1,0,0")
        if folder_fractured:
            coco_images.append({"id": len(coco_images) + 1, "width": image.shape[1], "height": image.shape[0],
                                "file_name": image_id})
            xs, ys = polygon[0::2], polygon[1::2]
            coco_annotations.append({"id": len(coco_annotations), "iscrowd": 0, "image_id": len(coco_images),
                                     "category_id": 0, "segmentation": [polygon],
                                     "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "area": 1.0})
        return image_id

    for (part, fractured), count in FILMS.items():
        for _ in range(count):
            add({part: 1}, fractured, fractured, part=part)
    # The contradiction: IMG0000001 is a fractured hand film (folder), flagged 0 in the CSV.
    rows[1] = rows[1].replace(",0,0,1,1,1,0,0", ",0,0,0,1,1,0,0")
    add({"leg": 1}, 0, 0, name=TRUNCATED, part="leg")
    add({"hand": 1, "shoulder": 1, "mixed": 1}, 0, 0, name=MIXED)
    # The copy: the same bytes as a normal hand film, under another id.
    original = root / "images" / "Non_fractured" / DUPLICATE_OF[1]
    shutil.copyfile(original, root / "images" / "Non_fractured" / DUPLICATE_OF[0])
    original_row = next(row for row in rows if row.startswith(DUPLICATE_OF[1]))
    rows.append(original_row.replace(DUPLICATE_OF[1], DUPLICATE_OF[0]))
    # The truncated film: its bytes cut in half (no end-of-image marker).
    truncated = root / "images" / "Non_fractured" / TRUNCATED
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    (root / "dataset.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    coco = {"info": {}, "images": coco_images, "annotations": coco_annotations,
            "categories": [{"id": 0, "name": "fractured"}]}
    coco_dir = root / "Annotations" / "COCO JSON"
    coco_dir.mkdir(parents=True)
    (coco_dir / "COCO_fracture_masks.json").write_text(json.dumps(coco))
    return root


def write_png(path: Path, value: int = 120) -> None:
    """A small grey PNG with a bright square (so it is not blank)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((48, 40), value, dtype=np.uint8)
    image[10:30, 10:25] = 230
    assert cv2.imwrite(str(path), image)


def write_manifest(folder: Path, rows: list[dict[str, object]], name: str = "manifest.csv",
                   columns: list[str] | None = None, images: bool = True) -> Path:
    """Write ``rows`` as a manifest in ``folder`` (and, with ``images``, a PNG per listed path)."""
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(str(row.get(column, "")) for column in columns))
        if images and "path" in row:
            path = folder / str(row["path"])
            if ".." not in str(row["path"]) and not Path(str(row["path"])).is_absolute():
                write_png(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name
