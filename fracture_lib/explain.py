"""Grad-CAM explanations, overlays, and the pointing game on known fracture boxes.

Grad-CAM (Selvaraju et al. 2017) weighs each channel of the last convolutional layer by the mean
gradient of the class score (taken before the output's sigmoid or softmax) with respect to it;
the positive part of the weighted sum, scaled to [0, 1] per image and upsampled to the input
size, shows which regions pushed the decision.

The pointing game asks whether the heatmap's peak falls inside a fracture's bounding box: the
demo set's drawn fractures, or FracAtlas's outlines (``datasets.load_fracture_boxes``). Boxes are in pixels of the saved (original) image, heatmaps in the
model's square input (``preprocess.preprocess_image``: aspect-preserving resize, then zero padding
to a centred ``img_size`` square); ``boxes.box_to_model_coordinates`` maps one onto the other. The hit
rate is reported beside the chance rate (the mean share of the square a box covers: the hit rate
of a peak dropped uniformly at random).
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from fracture_lib import preprocess
from fracture_lib.boxes import box_mask, load_model_boxes
from fracture_lib.datasets.table import BOX_COLUMNS
from fracture_lib.errors import ParameterError



# --------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------


def _as_batch(model, images: np.ndarray) -> tuple[np.ndarray, bool]:
    """Return ``images`` as float32 (N, S, S, C) for ``model`` and whether one image was given."""
    array = np.asarray(images)
    input_shape = tuple(model.inputs[0].shape[1:])
    single = array.ndim == 2 or array.shape == input_shape
    if single:
        array = array[np.newaxis]
    if array.ndim == 3:
        array = array[..., np.newaxis]
    if array.ndim != 4 or array.shape[1:3] != input_shape[:2]:
        raise ParameterError(
            f"images of shape {np.asarray(images).shape} do not fit the model's input {input_shape}: "
            "preprocess them to the run's img_size first"
        )
    return array.astype(np.float32), single


def _default_layer_name(model) -> str:
    """The last convolutional layer, as the model builder names it."""
    from fracture_lib import models

    return models.last_conv_layer_name(model)


def gradcam_cell_size(model, layer_name: str | None = None) -> float:
    """Side of one Grad-CAM cell in model-input pixels: input size / the feature map's width.

    The heatmap is upsampled from that coarse grid, so its peak is only known to about one cell.
    """
    layer = model.get_layer(layer_name or _default_layer_name(model))
    feature_width = layer.output.shape[2]
    return float(model.inputs[0].shape[2]) / float(feature_width)


def gradcam(model, images: np.ndarray, layer_name: str | None = None, class_index: int | None = None,
            batch_size: int = 32) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1], upsampled to the input size.

    ``images``: one preprocessed image (S, S) / (S, S, 1) or a batch (N, S, S) / (N, S, S, 1),
    uint8 or float in the model's input range (raw 0..255). ``layer_name`` defaults to
    ``models.last_conv_layer_name(model)``. For a single sigmoid unit, ``class_index`` ``None``
    or 1 explains "abnormal" and 0 explains "normal"; for a softmax, ``None`` explains each image's
    predicted class. The class score is taken before the output's sigmoid/softmax, so confident
    predictions still get a map. Returns float32 (S, S) for one image, (N, S, S) for a batch; an
    image with no positive evidence gets a map of zeros.
    """
    import keras
    import tensorflow as tf

    batch, single = _as_batch(model, images)
    layer = model.get_layer(layer_name or _default_layer_name(model))
    output_layer = _scoring_layer(model)
    # One forward pass gives the feature maps and what the output layer receives from them.
    last_input = output_layer.input if output_layer is not None else model.output
    gradient_model = keras.Model(model.inputs, [layer.output, last_input])
    heatmaps = []
    for start in range(0, len(batch), batch_size):
        inputs = tf.convert_to_tensor(batch[start:start + batch_size])
        with tf.GradientTape() as tape:
            feature_maps, last_values = gradient_model(inputs, training=False)
            scores = _class_scores(_logits(output_layer, last_values), class_index, output_layer is not None)
        gradients = tape.gradient(scores, feature_maps)
        # Channel weights: the gradient averaged over the feature map's positions.
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        maps = tf.nn.relu(tf.reduce_sum(feature_maps * channel_weights, axis=-1)).numpy()
        heatmaps.extend(_normalise_and_resize(heatmap, batch.shape[1:3]) for heatmap in maps)
    result = np.stack(heatmaps).astype(np.float32)
    return result[0] if single else result


def _scoring_layer(model):
    """The output layer (Dense, or a bare activation) when it ends in a sigmoid or softmax, else None.

    Grad-CAM follows the class score *before* that activation (as in the Grad-CAM paper): a
    saturated probability has vanishing gradients and would give empty maps.
    """
    import keras

    layer = model.layers[-1]
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    if isinstance(layer, (keras.layers.Dense, keras.layers.Activation)) and activation in ("sigmoid", "softmax"):
        return layer
    return None


def _logits(output_layer, last_values):
    """The output layer's pre-activation values (or the model output when there is no such layer).

    A bare sigmoid layer (the cell head's, ``models.HEADS``) receives the logit itself.
    """
    import keras
    from keras import ops

    if output_layer is None or isinstance(output_layer, keras.layers.Activation):
        return last_values
    logits = ops.matmul(last_values, output_layer.kernel)
    return logits + output_layer.bias if output_layer.use_bias else logits


def _class_scores(outputs, class_index: int | None, are_logits: bool):
    """The score whose gradient Grad-CAM follows, one per image."""
    import tensorflow as tf

    if outputs.shape[-1] == 1:
        if class_index not in (None, 0, 1):
            raise ParameterError(f"class_index={class_index}: a single sigmoid unit has classes 0 and 1")
        # "Normal" is the opposite evidence: -logit (or 1 - p), whose gradient is the negative.
        if class_index in (None, 1):
            return outputs[:, 0]
        return -outputs[:, 0] if are_logits else 1.0 - outputs[:, 0]
    predictions = outputs
    if class_index is None:
        chosen = tf.argmax(predictions, axis=-1)
    elif 0 <= class_index < predictions.shape[-1]:
        chosen = tf.fill(tf.shape(predictions)[:1], tf.cast(class_index, tf.int64))
    else:
        raise ParameterError(f"class_index={class_index}: the model has {predictions.shape[-1]} classes")
    return tf.gather(predictions, chosen, axis=1, batch_dims=1)


def _normalise_and_resize(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale one map to [0, 1] by its maximum and resize it (bilinear) to ``size`` (H, W)."""
    peak = float(heatmap.max())
    scaled = heatmap / peak if peak > 0 else np.zeros_like(heatmap)
    resized = cv2.resize(scaled.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a heatmap (JET colour map) over a greyscale or RGB uint8 image; returns RGB uint8."""
    if not 0.0 <= alpha <= 1.0:
        raise ParameterError(f"alpha={alpha} must lie between 0 and 1")
    picture = np.asarray(image)
    if picture.ndim == 3 and picture.shape[-1] == 1:
        picture = picture[..., 0]
    if picture.dtype != np.uint8:
        picture = np.clip(picture, 0, 255).astype(np.uint8)
    base = cv2.cvtColor(picture, cv2.COLOR_GRAY2RGB) if picture.ndim == 2 else picture
    heat = np.squeeze(np.asarray(heatmap, dtype=np.float32))
    if heat.shape != base.shape[:2]:
        heat = cv2.resize(heat, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    coloured = cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(base, 1.0 - alpha, coloured, alpha, 0.0)


def heatmap_peak(heatmap: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the heatmap's maximum (the first one on ties)."""
    heat = np.asarray(heatmap)
    row, column = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(row), int(column)


# --------------------------------------------------------------------------------------------
# Boxes and the pointing game
# --------------------------------------------------------------------------------------------


def point_in_box(point: tuple[int, int], box: Sequence[float], tolerance: float = 0.0) -> bool:
    """True when pixel ``(row, col)``'s centre lies in the box, widened by ``tolerance`` pixels."""
    row, column = point
    x_min, y_min, x_max, y_max = box
    return (x_min - tolerance <= column + 0.5 <= x_max + tolerance
            and y_min - tolerance <= row + 0.5 <= y_max + tolerance)


def pointing_game(heatmaps: np.ndarray, boxes: Sequence, tolerance: float = 0.0) -> dict[str, float]:
    """Share of heatmaps whose peak lies inside their fracture box, beside the chance rate.

    ``heatmaps`` (N, S, S); ``boxes`` gives each heatmap one box ``(x_min, y_min, x_max, y_max)``
    or several (a hit in any counts), in model coordinates (``box_to_model_coordinates``). A
    heatmap without any signal (constant) counts as a miss. Returns ``n``, ``hits``,
    ``hit_rate`` and ``chance_rate``: the mean share of the image the boxes cover, i.e. the hit
    rate of a peak dropped on a uniformly random pixel.
    """
    maps = np.asarray(heatmaps)
    if maps.ndim != 3 or len(maps) != len(boxes):
        raise ParameterError(f"{len(maps)} heatmaps but {len(boxes)} box entries: give one entry per heatmap")
    if len(maps) == 0:
        return {"n": 0, "hits": 0, "hit_rate": float("nan"), "chance_rate": float("nan")}
    hits, chances = 0, []
    for heatmap, image_boxes in zip(maps, boxes):
        mask = box_mask(image_boxes, heatmap.shape, tolerance)
        chances.append(float(mask.mean()))
        if heatmap.max() > heatmap.min() and mask[heatmap_peak(heatmap)]:
            hits += 1
    return {"n": int(len(maps)), "hits": int(hits), "hit_rate": hits / len(maps),
            "chance_rate": float(np.mean(chances))}


# --------------------------------------------------------------------------------------------
# From files: the images of a split, explained
# --------------------------------------------------------------------------------------------


def explain_paths(model, data_root: str | os.PathLike[str], paths: Sequence[str], settings,
                  layer_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess the images at ``paths`` (relative to ``data_root``) with the run's ``settings``
    (``PreprocessSettings``) and return ``(images uint8 (N, S, S), heatmaps (N, S, S))``."""
    size = int(settings.img_size)
    if len(paths) == 0:
        return np.zeros((0, size, size), np.uint8), np.zeros((0, size, size), np.float32)
    from fracture_lib import datasets

    root = datasets.resolve_source(data_root).root
    images = np.stack([preprocess.load_and_preprocess(root / path, settings) for path in paths])
    return images, gradcam(model, images, layer_name)


def pointing_game_for_paths(model, data_root: str | os.PathLike[str], paths: Sequence[str], settings,
                            layer_name: str | None = None, tolerance: float = 0.0) -> tuple[dict[str, float], pd.DataFrame]:
    """Play the pointing game on the images at ``paths`` that have a fracture box (demo set, FracAtlas).

    Returns the ``pointing_game`` summary and one row per boxed image (``path``, ``peak_row``,
    ``peak_col``, ``hit``, ``box_share``). Without boxes (real MURA) the summary has ``n == 0``.
    """
    boxes = load_model_boxes(data_root, paths, int(settings.img_size))
    boxed_paths = list(dict.fromkeys(boxes["path"]))
    _, heatmaps = explain_paths(model, data_root, boxed_paths, settings, layer_name)
    boxes_per_image = [boxes.loc[boxes["path"] == path, BOX_COLUMNS].to_numpy() for path in boxed_paths]
    summary = pointing_game(heatmaps, boxes_per_image, tolerance)
    rows = []
    for path, heatmap, image_boxes in zip(boxed_paths, heatmaps, boxes_per_image):
        mask = box_mask(image_boxes, heatmap.shape, tolerance)
        peak = heatmap_peak(heatmap)
        rows.append({"path": path, "peak_row": peak[0], "peak_col": peak[1],
                     "hit": bool(heatmap.max() > heatmap.min() and mask[peak]), "box_share": float(mask.mean())})
    return summary, pd.DataFrame(rows, columns=["path", "peak_row", "peak_col", "hit", "box_share"])
