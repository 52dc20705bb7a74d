"""Training on crops of larger films: the model learns at a finer scale and scores the whole film.

With ``train_crop > 0`` the cache holds the films at ``img_size`` (say 448 px, about FracAtlas's
own resolution) and every training image is a random ``train_crop`` square of one (say 256 px):
the network trains at the cost of its crop size and sees small fractures at 1.75 times the
scale. Validation, ``evaluate``, ``predict`` and Grad-CAM take the whole film at ``img_size``; a
compact network is fully convolutional and ends in global max pooling, so the same weights score a
film as its most suspicious region.

A crop must hold the finding that gives the film its label, so the crops come from the fracture
outlines. Each training image gets a few points of interest (``crop_points``): points inside its
fracture boxes when it has any. A normal film gets two kinds, half each: points on its body (pixels
brighter than the median of its exposed pixels), and the places where fractures lie on the other
films of its part (a point in a box of a fractured training film drawn at random). Without the
second kind the network learns where fractures tend to lie rather than what they look like: on
FracAtlas, crops centred on a fracture against crops centred anywhere on the bone ranked at 0.92
AUROC, but only 0.67 against normal films cropped where a fracture lay on another film, and whole
films at 0.69 (docs/real-data.md section 8). Each epoch the pipeline draws one of the points and
centres the crop near it (``pipeline.augment_images``). Data without any fracture box (real MURA,
manifests) are refused: a random crop of an abnormal film would often miss its abnormality.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fracture_lib import boxes, datasets
from fracture_lib.errors import FractureLibError, ParameterError
from fracture_lib.image_rows import ImageRows

# Points of interest kept per training image; the pipeline draws one of them per epoch.
POINTS_PER_IMAGE = 16
# How far the crop centre may lie from the drawn point, as a fraction of the crop side (either way),
# so the finding is not always in the middle and stays inside the crop under rotation.
CENTRE_JITTER = 0.25
# Rows read from the cache at a time while finding points of interest.
_CHUNK = 256

_NO_BOXES = ("train_crop needs fracture outlines to keep each fracture inside its crop, and none of the training "
             "images in {location} has one (FracAtlas and the demo set have them; MURA does not): set train_crop=0")


def check_crop(train_crop: int, img_size: int, minimum_size: int) -> None:
    """Raise ``ParameterError`` unless ``train_crop`` is 0 (off) or a side between ``minimum_size`` and ``img_size``."""
    if isinstance(train_crop, bool) or not isinstance(train_crop, (int, np.integer)) or train_crop < 0:
        raise ParameterError(f"train_crop={train_crop!r} must be a whole number of pixels: 0 (off) or e.g. 256")
    if train_crop and not minimum_size <= train_crop < img_size:
        raise ParameterError(f"train_crop={train_crop} must be at least {minimum_size} and smaller than "
                             f"img_size={img_size} (the films are cached at img_size and cropped to train_crop)")


def check_source_has_boxes(source: datasets.DataSource) -> None:
    """Raise ``FractureLibError`` when a data source has no fracture boxes at all (real MURA, manifests)."""
    boxes.require_fracture_boxes(source, _NO_BOXES)


def body_points(image: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``(x, y)`` pixel centres on the film's body: brighter than its exposed pixels' median.

    A blank image (no pixel above 0) gives its centre.
    """
    exposed = image[image > 0]
    if exposed.size == 0:
        height, width = image.shape
        return np.tile([(width - 1) / 2.0, (height - 1) / 2.0], (count, 1))
    rows, columns = np.nonzero(image > np.median(exposed))
    if rows.size == 0:
        # A film of one grey level: every exposed pixel is body.
        rows, columns = np.nonzero(image > 0)
    chosen = rng.integers(0, rows.size, count)
    return np.stack([columns[chosen], rows[chosen]], axis=1).astype(np.float64)


def box_points(image_boxes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``(x, y)`` points inside the boxes ``(k, 4)`` (x_min, y_min, x_max, y_max), each box equally likely."""
    chosen = image_boxes[rng.integers(0, len(image_boxes), count)]
    fractions = rng.random((count, 2))
    return chosen[:, :2] + fractions * (chosen[:, 2:] - chosen[:, :2])


def crop_points(images: np.ndarray | ImageRows, frame: pd.DataFrame, data_root: datasets.DataSource,
                img_size: int, seed: int) -> np.ndarray:
    """Float ``(N, POINTS_PER_IMAGE, 2)``: each image's points of interest ``(x, y)`` in the cached square.

    ``frame`` (``path``, ``label``, and ``body_part`` when known) lists the images in the order of
    ``images``. An abnormal image with fracture boxes gets points inside them; a normal image, points
    on its body (the first half) and in the boxes of fractured images of its part (the second half,
    each from an image drawn at random); an abnormal image without boxes, points on its body.
    """
    if len(frame) != len(images):
        raise ParameterError(f"{len(frame)} rows in the frame but {len(images)} images")
    image_boxes = boxes.load_model_boxes(data_root, frame["path"].tolist(), img_size)
    if image_boxes.empty:
        raise FractureLibError(_NO_BOXES.format(location=datasets.resolve_source(data_root).location))
    grouped = {path: group[boxes.BOX_COLUMNS].to_numpy(dtype=np.float64) for path, group in image_boxes.groupby("path")}
    labels = frame["label"].to_numpy().astype(int)
    paths = frame["path"].tolist()
    parts = frame["body_part"].tolist() if "body_part" in frame else [None] * len(frame)
    # The boxes of the fractured films, by part: where a normal film of that part is cropped too.
    boxed_by_part: dict = {}
    for path, label, part in zip(paths, labels, parts):
        if label == 1 and path in grouped:
            boxed_by_part.setdefault(part, []).append(grouped[path])
    every_boxed = [found for group in boxed_by_part.values() for found in group]
    rng = np.random.default_rng(seed)
    points = np.zeros((len(frame), POINTS_PER_IMAGE, 2), dtype=np.float32)
    on_body = POINTS_PER_IMAGE // 2
    for start in range(0, len(frame), _CHUNK):
        # A slice of an ImageRows view reads only its rows from the cache file.
        chunk = np.asarray(images[start:start + _CHUNK])
        for offset, image in enumerate(chunk):
            position = start + offset
            found = grouped.get(paths[position]) if labels[position] == 1 else None
            if found is not None and len(found):
                points[position] = box_points(found, POINTS_PER_IMAGE, rng)
                continue
            points[position] = body_points(np.asarray(image), POINTS_PER_IMAGE, rng)
            others = boxed_by_part.get(parts[position]) or every_boxed
            if labels[position] == 0 and others:
                # Half the normal film's points: where a fracture lies on other films of its part.
                chosen = rng.integers(0, len(others), POINTS_PER_IMAGE - on_body)
                points[position, on_body:] = [box_points(others[index], 1, rng)[0] for index in chosen]
    return points
