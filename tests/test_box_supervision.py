"""Box supervision: grid targets that move with the augmentation, the balanced box loss, the training-only head."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from fracture_lib import box_supervision, config
from fracture_lib.boxes import BoxTargets, grid_cells_touched
from fracture_lib.errors import FractureLibError, ParameterError
from fracture_lib.models import build_model
from fracture_lib.pipeline import AugmentSettings, make_dataset
from fracture_lib.runs import load_run
from fracture_lib.train import TrainConfig, train_model


def _targets(boxes_per_image: list[list[tuple[float, float, float, float]]], labels: list[int],
             img_size: int = 32, grid: tuple[int, int] = (4, 4)) -> BoxTargets:
    """BoxTargets of images named by position, built the way training builds them (from a frame)."""
    frame = pd.DataFrame({"path": [f"image{index}" for index in range(len(labels))], "label": labels})
    rows = [{"path": f"image{index}", "x_min": box[0], "y_min": box[1], "x_max": box[2], "y_max": box[3]}
            for index, image_boxes in enumerate(boxes_per_image) for box in image_boxes]
    boxes = pd.DataFrame(rows, columns=["path", "x_min", "y_min", "x_max", "y_max"])
    return BoxTargets.from_frame(frame, boxes, img_size, grid)


def test_targets_mark_the_cells_a_box_touches_and_who_is_known() -> None:
    # A box over pixels 9..14 (x) and 1..6 (y) of a 32 px square touches cells (0, 1) of a 4 x 4 grid only.
    targets = _targets([[(9, 1, 15, 7)], [], []], labels=[1, 0, 1])
    batch = targets.batch(np.arange(3))
    assert batch.shape == (3, 4, 4, 2)
    expected = np.zeros((4, 4))
    expected[0, 1] = 1
    np.testing.assert_array_equal(batch[0, :, :, 0], expected)
    # A normal image is known and empty; an abnormal image without a box is unknown.
    assert batch[1, :, :, 0].sum() == 0 and batch[1, :, :, 1].min() == 1
    assert batch[2, :, :, 1].max() == 0 and batch[0, :, :, 1].min() == 1
    assert targets.positive_images == 1
    # A box across a cell border touches both cells.
    np.testing.assert_array_equal(grid_cells_touched(np.pad(np.ones((2, 2)), ((7, 23), (15, 15))), (4, 4))[0:2, 1:3],
                                  [[1, 1], [1, 1]])


def test_boxes_of_a_normal_image_are_ignored() -> None:
    # A box recorded for an image labelled normal (a label contradiction) does not make it positive.
    batch = _targets([[(0, 0, 31, 31)]], labels=[0]).batch(np.arange(1))
    assert batch[..., 0].sum() == 0 and batch[..., 1].min() == 1


def test_augmented_targets_follow_the_image() -> None:
    # Each image is black with a white square exactly where its box is: after flips, rotations, zooms
    # and shifts, every white pixel must lie in a cell the target marks.
    size, grid = 64, (8, 8)
    rng = np.random.default_rng(0)
    corners = rng.integers(8, 40, (16, 2))
    images = np.zeros((16, size, size), dtype=np.uint8)
    boxes = []
    for index, (left, top) in enumerate(corners):
        images[index, top:top + 12, left:left + 12] = 255
        boxes.append([(left, top, left + 12, top + 12)])
    targets = _targets(boxes, labels=[1] * 16, img_size=size, grid=grid)
    settings = AugmentSettings(flip=True, rotation_degrees=30.0, zoom=0.1, translate=0.1)
    dataset = make_dataset(images, np.ones(16, np.float32), batch_size=16, training=True, augment=settings, seed=3,
                           box_targets=targets)
    inputs, _ = next(iter(dataset))
    warped = inputs[config.IMAGE_INPUT].numpy()[..., 0]
    cells = inputs[config.BOX_TARGET_INPUT].numpy()[..., 0]
    white_cells = np.stack([grid_cells_touched(image > 200, grid) for image in warped])
    assert white_cells.sum() > 16
    assert np.all(cells >= white_cells)
    # The targets moved: they differ from the unaugmented ones for most images.
    still = targets.batch(np.arange(16))[..., 0]
    assert (np.abs(cells - still).reshape(16, -1).sum(axis=1) > 0).sum() >= 8


def test_box_loss_is_balanced_and_skips_unknown_images() -> None:
    cells = np.zeros((3, 2, 2, 2), np.float32)
    cells[0, 0, 0, 0] = 1  # one box cell of four
    cells[:2, ..., 1] = 1  # images 0 and 1 known, image 2 unknown
    logits = np.full((3, 2, 2, 1), 0.5, np.float32)
    logits[2] = 40.0  # an unknown image's map is never penalised
    loss = float(box_supervision.box_loss(cells, logits))
    positive, negative = np.log1p(np.exp(-0.5)), np.log1p(np.exp(0.5))
    # Image 0: the mean of its box cell and of its three other cells; image 1 (normal): its four cells.
    assert loss == pytest.approx(((positive + negative) / 2 + negative) / 2, rel=1e-5)
    assert float(box_supervision.box_loss(np.zeros_like(cells), logits)) == 0.0


def test_the_box_head_learns_where_the_squares_are() -> None:
    # Bright squares in random places: with box supervision the head's strongest cell is the square's.
    keras.utils.set_random_seed(0)
    size, count = 64, 192
    rng = np.random.default_rng(1)
    images = rng.integers(0, 60, (count, size, size)).astype(np.uint8)
    labels = (np.arange(count) % 2).astype(np.float32)
    boxes = []
    for index in range(count):
        if labels[index]:
            left, top = rng.integers(2, size - 10, 2)
            images[index, top:top + 8, left:left + 8] = 220
            boxes.append([(left, top, left + 8, top + 8)])
        else:
            boxes.append([])
    model = build_model("small_cnn", size, seed=0)
    grid = box_supervision.feature_grid(model)
    targets = _targets(boxes, labels.astype(int).tolist(), img_size=size, grid=grid)
    trainer = box_supervision.training_model(model, box_loss_weight=1.0, seed=0)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    trainer.fit(make_dataset(images, labels, batch_size=32, training=True, augment=AugmentSettings(), seed=0,
                             box_targets=targets), epochs=12, verbose=0)
    head = keras.Model(model.input, trainer.get_layer("fracture_map").output)
    positives = np.flatnonzero(labels)
    maps = head.predict(images[positives], verbose=0)[..., 0]
    truth = targets.batch(positives)[..., 0]
    hits = [truth[slot].reshape(-1)[maps[slot].argmax()] == 1 for slot in range(len(positives))]
    # A 4 x 4 grid at 64 px: a square touches 1 to 4 of the 16 cells.
    chance = truth.mean()
    assert truth.shape[1:] == (4, 4) and chance < 0.2
    assert np.mean(hits) > max(0.6, 3 * chance)


def _tiny(tiny_demo_root: Path, **values) -> TrainConfig:
    settings = {"body_part": "elbow", "img_size": 32, "epochs": 1, "batch_size": 16, "seed": 0,
                "data_dir": str(tiny_demo_root), **values}
    return TrainConfig(**settings)


def test_training_with_boxes_saves_the_plain_classifier(tiny_demo_root: Path, tmp_path: Path) -> None:
    keras.backend.clear_session()
    plain = train_model(_tiny(tiny_demo_root, run_name="plain"), models_dir=tmp_path, verbose=0)
    boxed = train_model(_tiny(tiny_demo_root, run_name="boxes", box_loss_weight=20.0), models_dir=tmp_path, verbose=0)
    # The box loss is added to the training loss (large weight, same seed), not to validation's.
    assert boxed.history["loss"].iloc[0] > plain.history["loss"].iloc[0] + 1.0
    assert abs(boxed.history["val_loss"].iloc[0] - plain.history["val_loss"].iloc[0]) < 1.0
    run = load_run(boxed.run_dir)
    names = [layer.name for layer in run.model.layers]
    assert "fracture_map" not in names and "box_loss" not in names and len(run.model.inputs) == 1
    assert run.model.count_params() == load_run(plain.run_dir).model.count_params()
    assert json.loads((boxed.run_dir / "config.json").read_text())["box_loss_weight"] == 20.0


def test_box_loss_weight_is_checked(tiny_demo_root: Path, no_boxes_demo_root: Path, tmp_path: Path) -> None:
    for values, message in (({"box_loss_weight": -1.0}, "box_loss_weight=-1.0"),
                            ({"box_loss_weight": "yes"}, "box_loss_weight='yes'"),
                            ({"box_loss_weight": 1.0, "augment_on": "device"}, "augment_on=cpu"),
                            ({"box_loss_weight": 1.0, "target": config.BODY_PART_TARGET, "parts": ("elbow", "hand")},
                             "fracture models")):
        with pytest.raises(ParameterError, match=message):
            _tiny(tiny_demo_root, **values).validate()
    # Data without fracture boxes (real MURA has none): one clear error before training.
    with pytest.raises(FractureLibError, match="needs fracture outlines.*box_loss_weight=0"):
        train_model(_tiny(no_boxes_demo_root, box_loss_weight=1.0), models_dir=tmp_path, verbose=0)


def test_the_cell_head_scores_an_image_by_its_highest_cell() -> None:
    keras.backend.clear_session()
    model = build_model("small_cnn", 64, seed=0, head="cells")
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64)).astype(np.float32)[..., None]
    cell_logits = keras.Model(model.input, model.get_layer("fracture_map").output).predict(images, verbose=0)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (3, 1)
    np.testing.assert_allclose(probabilities[:, 0], 1 / (1 + np.exp(-cell_logits.reshape(3, -1).max(axis=1))),
                               rtol=1e-5)
    from fracture_lib import explain, outliers
    from fracture_lib.models import last_conv_layer_name

    # Grad-CAM, the feature distance of predict's unfamiliar-input check, and the backbones still work.
    assert last_conv_layer_name(model) == "last_conv"
    assert explain.gradcam(model, images[..., 0]).shape == (3, 64, 64)
    features, outputs = outliers.image_features(model, images[..., 0].astype(np.uint8))
    assert features.shape == (3, 96) and outputs.shape == (3, 1)
    backbone = build_model("mobilenetv2", 64, seed=0, head="cells")
    assert last_conv_layer_name(backbone) not in ("fracture_map", "dropout", "cell_max")
    for head, classes, message in (("attention", 1, "head='attention'"), ("cells", 3, "body-part classifier")):
        with pytest.raises(ParameterError, match=message):
            build_model("small_cnn", 64, num_classes=classes, head=head)


def test_boxes_train_the_cell_heads_own_map(tiny_demo_root: Path, tmp_path: Path) -> None:
    keras.backend.clear_session()
    model = build_model("small_cnn", 32, seed=0, head="cells")
    trainer = box_supervision.training_model(model, box_loss_weight=1.0, seed=0)
    assert [layer.name for layer in trainer.layers].count("fracture_map") == 1
    assert trainer.get_layer("fracture_map") is model.get_layer("fracture_map")
    result = train_model(_tiny(tiny_demo_root, run_name="cells", head="cells", box_loss_weight=1.0),
                         models_dir=tmp_path, verbose=0)
    saved = load_run(result.run_dir)
    assert saved.config["head"] == "cells" and "fracture_map" in [layer.name for layer in saved.model.layers]
