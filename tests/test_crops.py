"""Training on crops: points of interest, crops that keep them, whole films validated and saved."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from fracture_lib import config, crops
from fracture_lib.boxes import BoxTargets
from fracture_lib.cache import build_cache
from fracture_lib.datasets import resolve_source
from fracture_lib.errors import FractureLibError, ParameterError
from fracture_lib.models import build_model
from fracture_lib.pipeline import AugmentSettings, augment_images, crop_transforms, make_dataset, random_transforms
from fracture_lib.runs import load_run
from fracture_lib.train import TrainConfig, predict_images, train_model

RICH = AugmentSettings(flip=True, rotation_degrees=30.0, zoom=0.1, translate=0.05, contrast=0.2, brightness=0.1,
                       gamma=0.2)


def test_body_and_box_points() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40), dtype=np.uint8)
    image[5:35, 5:35] = 60          # the exposed film
    image[10:20, 22:30] = 200       # its bright body
    points = crops.body_points(image, 50, rng)
    assert points.shape == (50, 2)
    # (x, y): columns 22-29, rows 10-19.
    assert points[:, 0].min() >= 22 and points[:, 0].max() <= 29 and points[:, 1].min() >= 10 and points[:, 1].max() <= 19
    np.testing.assert_array_equal(crops.body_points(np.zeros((9, 7), np.uint8), 3, rng), [[3.0, 4.0]] * 3)
    boxes = np.array([[2.0, 3.0, 6.0, 5.0], [30.0, 30.0, 31.0, 38.0]])
    inside = crops.box_points(boxes, 200, rng)
    in_first = (inside[:, 0] >= 2) & (inside[:, 0] <= 6) & (inside[:, 1] >= 3) & (inside[:, 1] <= 5)
    in_second = (inside[:, 0] >= 30) & (inside[:, 0] <= 31) & (inside[:, 1] >= 30) & (inside[:, 1] <= 38)
    assert np.all(in_first | in_second) and 60 < in_first.sum() < 140


def test_crop_points_of_a_demo_split(tiny_demo_root: Path) -> None:
    from fracture_lib import datasets
    from fracture_lib.boxes import load_model_boxes
    from fracture_lib.preprocess import PreprocessSettings

    source = resolve_source(tiny_demo_root)
    index = datasets.build_index(source, parts=("elbow",), seed=0)
    cache = build_cache(index, source.root, PreprocessSettings(img_size=64), progress=False)
    images, frame = cache.select("train")
    points = crops.crop_points(images, frame, source, 64, seed=0)
    assert points.shape == (len(frame), crops.POINTS_PER_IMAGE, 2)
    boxes = load_model_boxes(source, frame["path"].tolist(), 64)
    boxed = frame["label"].eq(1) & frame["path"].isin(set(boxes["path"]))
    assert boxed.sum() > 5
    for position in np.flatnonzero(boxed.to_numpy()):
        image_boxes = boxes[boxes["path"] == frame["path"].iloc[position]][["x_min", "y_min", "x_max", "y_max"]].to_numpy()
        x, y = points[position, :, 0, None], points[position, :, 1, None]
        inside = (x >= image_boxes[:, 0]) & (x <= image_boxes[:, 2]) & (y >= image_boxes[:, 1]) & (y <= image_boxes[:, 3])
        assert inside.any(axis=1).all()
    # A normal film's first points lie on its brighter half, the others in a fractured film's box.
    half = crops.POINTS_PER_IMAGE // 2
    fractured_boxes = boxes[boxes["path"].isin(set(frame["path"][boxed]))][["x_min", "y_min", "x_max", "y_max"]].to_numpy()
    normals = np.flatnonzero(frame["label"].eq(0).to_numpy())
    assert len(normals) > 5
    for normal in normals:
        film = np.asarray(images[normal])
        columns, rows = points[normal, :half, 0].astype(int), points[normal, :half, 1].astype(int)
        assert np.all(film[rows, columns] > np.median(film[film > 0]))
        x, y = points[normal, half:, 0, None], points[normal, half:, 1, None]
        inside = ((x >= fractured_boxes[:, 0]) & (x <= fractured_boxes[:, 2]) & (y >= fractured_boxes[:, 1])
                  & (y <= fractured_boxes[:, 3]))
        assert inside.any(axis=1).all()
    # The borrowed places come from several fractured films, not one.
    assert len(np.unique(points[normals, half:].reshape(-1, 2).round(), axis=0)) > 10
    with pytest.raises(ParameterError, match="rows in the frame"):
        crops.crop_points(images, frame.iloc[:3], source, 64, seed=0)


def test_a_crop_keeps_its_point_of_interest_under_every_transformation() -> None:
    # Each image is black but for a 5 x 5 white square somewhere; the square's centre is its one point.
    rng = np.random.default_rng(1)
    count, size, crop = 64, 96, 48
    centres = rng.integers(8, size - 8, (count, 2))
    images = np.zeros((count, size, size), dtype=np.uint8)
    for image, (x, y) in zip(images, centres):
        image[y - 2:y + 3, x - 2:x + 3] = 255
    points = centres[:, None, :].astype(np.float32)
    settings = AugmentSettings(flip=True, rotation_degrees=30.0, zoom=0.1, translate=0.05)
    cropped = augment_images(images, np.array([3, 4]), settings, crop_size=crop, crop_points=points)
    assert cropped.shape == (count, crop, crop) and cropped.dtype == np.float32
    # Every square lies whole inside its crop (about 25 white pixels, up to interpolation) ...
    white = (cropped > 127).sum(axis=(1, 2))
    assert white.min() >= 15 and white.max() <= 35
    # ... and not always in the middle: the crop centre is jittered around the point.
    rows = np.array([np.argwhere(image > 127).mean(axis=0) for image in cropped])
    assert rows.std(axis=0).min() > 3.0
    # The same seed gives the same crops; another seed other crops.
    again = augment_images(images, np.array([3, 4]), settings, crop_size=crop, crop_points=points)
    np.testing.assert_array_equal(cropped, again)
    assert not np.array_equal(cropped, augment_images(images, np.array([5, 4]), settings, crop_size=crop,
                                                      crop_points=points))


def test_crop_draws_leave_the_other_transformations_alone() -> None:
    matrices, _ = random_transforms(8, 64, 64, np.array([1, 2]), RICH)
    points = np.full((8, 4, 2), 10.0)
    cropped = crop_transforms(matrices, points, 32, 64, 64, np.array([1, 2]))
    # The flip, rotation and zoom are the same; only the translation moves the crop.
    np.testing.assert_allclose(cropped[:, :, :2], matrices[:, :, :2])
    assert not np.allclose(cropped[:, :, 2], matrices[:, :, 2])
    # Without rotation, zoom or shift a point maps to within the jitter of the crop's centre.
    still, _ = random_transforms(8, 64, 64, np.array([1, 2]), AugmentSettings(flip=False, rotation_degrees=0.0))
    moved = crop_transforms(still, points, 32, 64, 64, np.array([1, 2]))
    mapped = moved[:, :, :2] @ np.array([10.0, 10.0]) + moved[:, :, 2]
    assert np.all(np.abs(mapped - 15.5) <= crops.CENTRE_JITTER * 32 + 1e-6)


def test_make_dataset_crops_training_batches_only() -> None:
    images = np.random.default_rng(0).integers(0, 256, (10, 40, 40), dtype=np.uint8)
    labels = np.arange(10) % 2
    points = np.full((10, 3, 2), 20.0, dtype=np.float32)
    training = make_dataset(images, labels, batch_size=4, training=True, augment=RICH, seed=0, crop_size=24,
                            crop_points=points)
    shapes = [tuple(batch.shape) for batch, _ in training]
    assert shapes == [(4, 24, 24, 1), (4, 24, 24, 1), (2, 24, 24, 1)]
    # A crop alone (no augmentation settings) still crops.
    plain_crop = next(iter(make_dataset(images, labels, batch_size=4, training=True, crop_size=24, crop_points=points)))
    assert plain_crop[0].shape == (4, 24, 24, 1)
    # Validation batches are whole films.
    assert next(iter(make_dataset(images, labels, batch_size=4, crop_size=24, crop_points=points)))[0].shape == (4, 40, 40, 1)
    for values, message in (({"crop_size": 40, "crop_points": points}, "below the image side 40"),
                            ({"crop_size": 24, "crop_points": None}, "crop_points must be"),
                            ({"crop_size": 24, "crop_points": points[:5]}, "with 10 images"),
                            ({"crop_size": 24, "crop_points": points,
                              "box_targets": BoxTargets.unknown(10, 40, (4, 4))}, "cannot be combined")):
        with pytest.raises(ParameterError, match=message):
            make_dataset(images, labels, batch_size=4, training=True, **values)


def _tiny(tiny_demo_root: Path, **values) -> TrainConfig:
    settings = {"body_part": "elbow", "img_size": 64, "train_crop": 32, "epochs": 1, "batch_size": 16, "seed": 0,
                "split_seed": 0, "data_dir": str(tiny_demo_root), **values}
    return TrainConfig(**settings)


def test_train_crop_is_checked(tiny_demo_root: Path, no_boxes_demo_root: Path, tmp_path: Path) -> None:
    for values, message in (({"train_crop": -1}, "train_crop=-1"),
                            ({"train_crop": 64}, "smaller than img_size=64"),
                            ({"train_crop": 8}, "at least 16"),
                            ({"train_crop": 2.5}, "whole number"),
                            ({"arch": "mobilenetv2"}, "set arch=small_cnn or train_crop=0"),
                            ({"augment_on": "device"}, "augment_on=cpu"),
                            ({"box_loss_weight": 1.0}, "cannot be combined"),
                            ({"target": config.BODY_PART_TARGET, "parts": ("elbow", "hand")}, "fracture models")):
        with pytest.raises(ParameterError, match=message):
            _tiny(tiny_demo_root, **values).validate()
    with pytest.raises(ParameterError, match="scores any input size|takes one input size"):
        build_model("mobilenetv2", 64, any_input_size=True)
    # Data without fracture boxes (real MURA has none): one clear error before any image is cached.
    with pytest.raises(FractureLibError, match="train_crop needs fracture outlines.*train_crop=0"):
        train_model(_tiny(no_boxes_demo_root), models_dir=tmp_path, verbose=0)


def test_training_on_crops_saves_a_whole_film_model(tiny_demo_root: Path, tmp_path: Path) -> None:
    keras.backend.clear_session()
    result = train_model(_tiny(tiny_demo_root, run_name="crops", tta=True), models_dir=tmp_path, verbose=0)
    run = load_run(result.run_dir)
    # The saved model takes whole films at img_size, like every other run's.
    assert run.model.input_shape == (None, 64, 64, 1) and run.config["train_crop"] == 32
    # It is the model that was validated: its flip-averaged predictions of the validation films are the saved ones.
    from fracture_lib import datasets

    source = resolve_source(tiny_demo_root)
    index = datasets.build_index(source, parts=("elbow",), seed=0)
    cache = build_cache(index, source.root, run.preprocess, progress=False)
    images, frame = cache.select("val")
    saved = pd.read_csv(result.run_dir / "val_predictions.csv").set_index("path").loc[frame["path"], "probability"]
    np.testing.assert_allclose(predict_images(run.model, images, tta=True), saved.to_numpy(), atol=1e-5)
    # Training changed the weights the model was built with.
    initial = build_model("small_cnn", 64, seed=0)
    assert not np.allclose(initial.get_layer("last_conv_conv").get_weights()[0],
                           run.model.get_layer("last_conv_conv").get_weights()[0])
