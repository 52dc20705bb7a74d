"""Fracture outlines as extra supervision: a training-only head that learns where the fracture is.

With ``box_loss_weight > 0`` a fracture model trains with a second, auxiliary task: a 1 x 1
convolution on the last convolutional layer scores every cell of its grid, and a loss teaches it
which cells hold a fracture box (``boxes.BoxTargets``: the boxes moved with the augmentation).
The classifier itself is unchanged (global pooling, then one sigmoid unit); the auxiliary loss
only pushes the shared features towards the fracture, which a few hundred fractured films rarely
teach on their own (see docs/real-data.md: the pointing game of the default recipe on FracAtlas).

The head exists only in the training model (``training_model``). The model that is saved,
evaluated and used by ``predict`` is the plain classifier, whose layers the training model shares,
so runs with and without box supervision load, score and explain the same way. A model built with
the cell head (``models.HEADS``: the image's score is its most suspicious cell's) needs no extra
head: the box loss trains the very map its prediction is the maximum of.

The loss of one image is balanced between its cells: the mean binary cross-entropy over its box
cells and over its other cells, averaged (an image labelled normal has only the latter). Images
whose target is unknown (abnormal without an outline) add nothing; the batch's loss is the mean
over the known images, times ``box_loss_weight``, added to the classifier's loss.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import pandas as pd

from fracture_lib import boxes, config, datasets
from fracture_lib.errors import FractureLibError
from fracture_lib.models import CELL_MAP_LAYER, last_conv_layer_name


_NO_BOXES = ("box_loss_weight needs fracture outlines, and none of the training images in {location} has one "
             "(FracAtlas and the demo set have them; MURA does not): set box_loss_weight=0")


def feature_grid(model: keras.Model) -> tuple[int, int]:
    """The (rows, columns) of the model's last convolutional layer: the grid box targets are for."""
    shape = model.get_layer(last_conv_layer_name(model)).output.shape
    return int(shape[1]), int(shape[2])


def check_source_has_boxes(source: datasets.DataSource) -> None:
    """Raise ``FractureLibError`` when a data source has no fracture boxes at all (real MURA, manifests)."""
    boxes.require_fracture_boxes(source, _NO_BOXES)


def training_targets(frame: pd.DataFrame, data_root: str | os.PathLike[str] | datasets.DataSource,
                     model: keras.Model, img_size: int) -> boxes.BoxTargets:
    """Box targets of the training images in ``frame``; an error when the data have no fracture boxes."""
    image_boxes = boxes.load_model_boxes(data_root, frame["path"].tolist(), img_size)
    targets = boxes.BoxTargets.from_frame(frame, image_boxes, img_size, feature_grid(model))
    if targets.positive_images == 0:
        raise FractureLibError(_NO_BOXES.format(location=datasets.resolve_source(data_root).location))
    return targets


class BoxLoss(keras.layers.Layer):
    """Adds the weighted box loss of the map's logits to the model's losses; passes ``probability`` through."""

    def __init__(self, weight: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weight = float(weight)

    def call(self, probability: Any, map_logits: Any, target: Any) -> Any:
        self.add_loss(self.weight * box_loss(target, map_logits))
        return probability

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight": self.weight}


def box_loss(target: Any, map_logits: Any) -> Any:
    """Mean over known images of each image's cell-balanced binary cross-entropy (see the module's notes).

    ``target`` is ``(B, R, C, 2)``: cell targets, then the image's known flag (the same in every
    cell); ``map_logits`` is ``(B, R, C, 1)``.
    """
    ops = keras.ops
    map_logits = ops.cast(map_logits, "float32")
    cells, known = target[..., 0:1], target[..., 1:2]
    # Elementwise cross-entropy from logits (numerically stable): max(x, 0) - x * z + log(1 + exp(-|x|)).
    cross_entropy = (ops.relu(map_logits) - map_logits * cells + ops.log1p(ops.exp(-ops.abs(map_logits))))
    positives = ops.sum(cells, axis=(1, 2, 3))
    negatives = ops.sum(1.0 - cells, axis=(1, 2, 3))
    positive_mean = ops.sum(cross_entropy * cells, axis=(1, 2, 3)) / ops.maximum(positives, 1.0)
    negative_mean = ops.sum(cross_entropy * (1.0 - cells), axis=(1, 2, 3)) / ops.maximum(negatives, 1.0)
    per_image = ops.where(positives > 0, (positive_mean + negative_mean) / 2.0, negative_mean)
    image_known = known[:, 0, 0, 0]
    return ops.sum(per_image * image_known) / ops.maximum(ops.sum(image_known), 1.0)


def training_model(model: keras.Model, box_loss_weight: float, seed: int) -> keras.Model:
    """The model ``fit`` trains: ``model`` plus the box head and its loss, sharing ``model``'s layers.

    A model with the cell head has its own map of cell scores, which the box loss then trains; any
    other gets a training-only 1 x 1 convolution on its last convolutional layer.

    Its inputs are a dictionary (``config.IMAGE_INPUT``: the images, ``config.BOX_TARGET_INPUT``: the box
    targets, as ``pipeline.make_dataset`` yields them with ``box_targets``);
    its output is ``model``'s probability, so metrics and the classifier's loss are unchanged.
    """
    rows, columns = feature_grid(model)
    target = keras.Input(shape=(rows, columns, 2), name=config.BOX_TARGET_INPUT)
    if CELL_MAP_LAYER in {layer.name for layer in model.layers}:
        # The cell head (models.HEADS) scores the cells already: the boxes train the map the prediction comes from.
        map_logits = model.get_layer(CELL_MAP_LAYER).output
    else:
        features = model.get_layer(last_conv_layer_name(model)).output
        map_logits = keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 200),
                                         dtype="float32", name=CELL_MAP_LAYER)(features)
    probability = BoxLoss(box_loss_weight, name="box_loss")(model.output, map_logits, target)
    return keras.Model({config.IMAGE_INPUT: model.input, config.BOX_TARGET_INPUT: target}, probability, name=f"{model.name}_boxes")
