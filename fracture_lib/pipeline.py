"""The ``tf.data`` input pipeline: batches from the preprocessed cache, augmented on the fly.

Images come from the in-memory ``uint8`` cache (``preprocess.build_cache``), so no file is
decoded during training. Augmentation follows the MURA paper (random horizontal flip and
rotation up to 30 degrees; optional small zoom and contrast) and is applied to a whole batch at
once with one projective-transform op, which is far cheaper than transforming image by image.
The pipeline yields float32 ``(B, S, S, 1)`` tensors in 0..255; each model normalises its input
itself, so the pipeline does not depend on the backbone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from fracture_lib.errors import ParameterError


@dataclass(frozen=True)
class AugmentSettings:
    """Random training-time transformations, applied per image within each batch."""

    flip: bool = True
    rotation_degrees: float = 30.0
    zoom: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.rotation_degrees <= 180:
            raise ParameterError(f"rotation_degrees={self.rotation_degrees} must be between 0 and 180")
        if not 0 <= self.zoom < 1:
            raise ParameterError(f"zoom={self.zoom} must be in [0, 1), e.g. 0.1 for +-10%")
        if not 0 <= self.contrast < 1:
            raise ParameterError(f"contrast={self.contrast} must be in [0, 1), e.g. 0.2 for +-20%")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AugmentSettings":
        """Rebuild settings saved with ``to_dict``."""
        return cls(**{key: values[key] for key in ("flip", "rotation_degrees", "zoom", "contrast") if key in values})


def augment_batch(images: tf.Tensor, seed: tf.Tensor, settings: AugmentSettings) -> tf.Tensor:
    """Randomly flip, rotate, zoom and change the contrast of a batch ``(B, S, S, 1)``.

    The batch may be uint8 (cheapest: the transform moves a quarter of the bytes) or float32;
    the result is float32 in 0..255.

    ``seed`` is a shape-(2,) integer tensor: the same seed gives the same transformations.
    Pixels moved in from outside the image are black, like the padding of the letterbox.
    """
    batch_size = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)

    # Draw one flip sign, angle and zoom factor per image.
    if settings.flip:
        flip = tf.where(tf.random.stateless_uniform([batch_size], seeds[0]) < 0.5, -1.0, 1.0)
    else:
        flip = tf.ones([batch_size])
    max_angle = settings.rotation_degrees * math.pi / 180.0
    angle = tf.random.stateless_uniform([batch_size], seeds[1], -max_angle, max_angle)
    scale = tf.random.stateless_uniform([batch_size], seeds[2], 1.0 - settings.zoom, 1.0 + settings.zoom)

    # Each output pixel is read from input = R(angle) * F(flip) * (output - centre) / scale + centre.
    cos, sin = tf.cos(angle), tf.sin(angle)
    m00, m01 = cos * flip / scale, -sin / scale
    m10, m11 = sin * flip / scale, cos / scale
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    transforms = tf.stack([
        m00, m01, centre_x - m00 * centre_x - m01 * centre_y,
        m10, m11, centre_y - m10 * centre_x - m11 * centre_y,
        tf.zeros([batch_size]), tf.zeros([batch_size]),
    ], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    if settings.contrast > 0:
        images = tf.cast(images, tf.float32)
        factor = tf.random.stateless_uniform([batch_size, 1, 1, 1], seeds[3],
                                             1.0 - settings.contrast, 1.0 + settings.contrast)
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * factor + mean
        return tf.clip_by_value(images, 0.0, 255.0)
    return tf.cast(images, tf.float32)


def make_dataset(images: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 32,
                 training: bool = False, augment: AugmentSettings | None = None, seed: int = 42,
                 sample_weights: np.ndarray | None = None) -> tf.data.Dataset:
    """Return a batched, prefetched dataset of ``float32 (B, S, S, 1)`` images in 0..255.

    Yields ``images`` alone when ``labels`` is None, else ``(images, labels)`` or
    ``(images, labels, sample_weights)``. Shuffling (reshuffled every epoch) and augmentation
    happen only when ``training``; both are deterministic for a given ``seed``.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ParameterError(f"images must be a uint8 array (N, S, S), got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise ParameterError(f"batch_size={batch_size} must be at least 1")
    count = len(images)
    for name, values in (("labels", labels), ("sample_weights", sample_weights)):
        if values is not None and len(values) != count:
            raise ParameterError(f"{name} has {len(values)} entries but there are {count} images")
    if count == 0:
        raise ParameterError("no images to make a dataset from: check the split and body part")

    # The dataset walks over row numbers; each batch of rows is gathered from the numpy array,
    # which works for caches far larger than TensorFlow's 2 GB constant limit.
    dataset = tf.data.Dataset.range(count)
    if training:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    size = images.shape[1:]

    def gather(rows: tf.Tensor) -> tf.Tensor:
        batch = tf.numpy_function(lambda positions: images[positions], [rows], tf.uint8, stateful=False)
        batch.set_shape([None, *size])
        return batch[..., tf.newaxis]

    label_tensor = None if labels is None else tf.constant(np.asarray(labels))
    weight_tensor = None if sample_weights is None else tf.constant(np.asarray(sample_weights, dtype=np.float32))

    def assemble(rows: tf.Tensor, batch_seed: tf.Tensor | None = None) -> Any:
        batch = gather(rows)
        if batch_seed is not None:
            batch = augment_batch(batch, batch_seed, augment)
        else:
            batch = tf.cast(batch, tf.float32)
        if label_tensor is None:
            return batch
        outputs = (batch, tf.gather(label_tensor, rows))
        if weight_tensor is not None:
            outputs += (tf.gather(weight_tensor, rows),)
        return outputs

    if training and augment is not None:
        # One pair of random integers per batch seeds the stateless augmentation ops.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(assemble, num_parallel_calls=tf.data.AUTOTUNE,
                                                            deterministic=True)
    else:
        dataset = dataset.map(assemble, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
