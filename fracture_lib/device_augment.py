"""Training-time augmentation on the accelerator (``augment_on: device``), inside the training step.

The default (``augment_on: cpu``) augments in the ``tf.data`` pipeline with OpenCV
(``pipeline.augment_images``). With ``augment_on: device`` the pipeline yields the cached images
unchanged and ``DeviceAugmentation``, a Keras layer, applies the same kinds of transformation to
each training batch where the model runs: the MURA paper's random horizontal flip and rotation,
zoom and shift about the centre as one affine warp per image (bilinear, black outside the film),
then gamma, contrast and brightness changes with ``pipeline._change_grey_levels``'s formulas.
The random parameters are drawn as ``pipeline.random_transforms`` draws them, from a
``keras.random.SeedGenerator`` (deterministic for a seed; each replica folds in its own id, so
replicas do not repeat each other's transformations). The random numbers themselves differ from
the CPU path's, so a run is reproducible for a seed within one ``augment_on`` choice.

The warp gathers the four neighbours of each source position itself instead of calling
``ImageProjectiveTransformV3`` (what Keras's ``RandomRotation``, ``RandomZoom`` and
``RandomTranslation`` use): that operation has no XLA kernel, and those layers would make Keras
drop ``jit_compile`` for the whole step.

Where it lives: ``training_model`` wraps the model that is saved, ``augmented images -> model``,
and only that wrapper is compiled and fitted. The wrapper shares every weight with the model, so
the model holds the trained weights, and ``model.keras`` is the plain model, exactly as with
``augment_on: cpu``: ``predict``, Grad-CAM, the unfamiliar-input check and evaluation load and
run it unchanged, and no augmentation can run at inference (the layer also passes its input
through whenever ``training`` is false, as in validation).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from fracture_lib.pipeline import AugmentSettings

PLACES = ("cpu", "device")


class DeviceAugmentation(keras.layers.Layer):
    """Random flip, rotation, zoom, shift and grey-level changes of ``(B, S, S, 1)`` images in 0..255.

    Active only when called with ``training=True``; float32 whatever the global dtype policy.

    Example:

    ```python
    layer = DeviceAugmentation(AugmentSettings(rotation_degrees=15.0), seed=0)
    augmented = layer(images, training=True)
    ```
    """

    def __init__(self, settings: AugmentSettings, seed: int = 42, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.settings = settings
        self.seed = int(seed)
        self.generator = keras.random.SeedGenerator(self.seed)

    def call(self, images: Any, training: bool | None = None) -> Any:
        if not training or not self.settings.changes_pixels:
            return images
        images = tf.convert_to_tensor(images, dtype=tf.float32)
        seed = tf.cast(self.generator.next(), tf.int64)
        replica_context = tf.distribute.get_replica_context()
        if replica_context is not None:
            replica = tf.cast(replica_context.replica_id_in_sync_group, tf.int64)
            seed = tf.random.experimental.stateless_fold_in(seed, replica)
        shape = tf.shape(images)
        count, height, width = shape[0], shape[1], shape[2]
        # One row of uniform numbers per image: flip, angle, scale, contrast, shift x, shift y, brightness, gamma.
        draws = tf.random.stateless_uniform(tf.stack([count, 8]), seed=seed, dtype=tf.float32)
        settings = self.settings

        def spread(column: int, half_width: float) -> Any:
            return (2.0 * draws[:, column] - 1.0) * half_width

        batch = images[..., 0]
        if settings.moves_pixels:
            mirror = tf.where(draws[:, 0] < 0.5, -1.0, 1.0) if settings.flip else tf.ones_like(draws[:, 0])
            angles = spread(1, math.radians(settings.rotation_degrees))
            scales = 1.0 + spread(2, settings.zoom)
            size = tf.cast(tf.stack([width, height]), tf.float32)
            shifts = tf.stack([spread(4, settings.translate), spread(5, settings.translate)], axis=1) * size
            batch = _warp(batch, mirror, angles, scales, shifts)
        if settings.gamma > 0:
            gammas = tf.exp(spread(7, math.log1p(settings.gamma)))
            batch = 255.0 * tf.pow(batch / 255.0, gammas[:, None, None])
        if settings.contrast > 0:
            contrasts = 1.0 + spread(3, settings.contrast)
            means = tf.reduce_mean(batch, axis=(1, 2), keepdims=True)
            batch = tf.clip_by_value((batch - means) * contrasts[:, None, None] + means, 0.0, 255.0)
        if settings.brightness > 0:
            shift = spread(6, settings.brightness * 255.0)[:, None, None]
            batch = tf.where(batch > 0, tf.clip_by_value(batch + shift, 0.0, 255.0), batch)
        return batch[..., tf.newaxis]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "settings": self.settings.to_dict(), "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DeviceAugmentation":
        config = dict(config)
        config.pop("dtype", None)
        return cls(AugmentSettings.from_dict(config.pop("settings")), **config)


def _warp(batch: Any, mirror: Any, angles: Any, scales: Any, shifts: Any) -> Any:
    """Warp each image ``(B, H, W)`` by scale * rotation * mirror about its centre, then a shift.

    The same forward mapping as ``pipeline.random_transforms`` (input pixel -> output position);
    each output pixel samples the input bilinearly at the inverse position, neighbours outside the
    image counting as black (OpenCV's ``BORDER_CONSTANT`` with 0).
    """
    shape = tf.shape(batch)
    count, height, width = shape[0], shape[1], shape[2]
    centre_x = (tf.cast(width, tf.float32) - 1.0) / 2.0
    centre_y = (tf.cast(height, tf.float32) - 1.0) / 2.0
    rows, columns = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    # The output position relative to the centre, less the shift, mapped back by the inverse linear part:
    # inverse(scale * R(angle) * diag(mirror, 1)) = diag(mirror, 1) * R(-angle) / scale.
    x = columns[None] - centre_x - shifts[:, 0, None, None]
    y = rows[None] - centre_y - shifts[:, 1, None, None]
    cos, sin = (tf.cos(angles) / scales)[:, None, None], (tf.sin(angles) / scales)[:, None, None]
    source_x = mirror[:, None, None] * (cos * x + sin * y) + centre_x
    source_y = -sin * x + cos * y + centre_y

    flat = tf.reshape(batch, tf.stack([count, height * width]))
    left, top = tf.floor(source_x), tf.floor(source_y)
    right_weight, bottom_weight = source_x - left, source_y - top
    result = tf.zeros_like(batch)
    for offset_x, offset_y, weight in ((0.0, 0.0, (1.0 - right_weight) * (1.0 - bottom_weight)),
                                       (1.0, 0.0, right_weight * (1.0 - bottom_weight)),
                                       (0.0, 1.0, (1.0 - right_weight) * bottom_weight),
                                       (1.0, 1.0, right_weight * bottom_weight)):
        column, row = left + offset_x, top + offset_y
        inside = (column >= 0) & (column <= tf.cast(width - 1, tf.float32)) & (row >= 0) \
            & (row <= tf.cast(height - 1, tf.float32))
        index = tf.cast(tf.clip_by_value(row, 0.0, tf.cast(height - 1, tf.float32)), tf.int32) * width \
            + tf.cast(tf.clip_by_value(column, 0.0, tf.cast(width - 1, tf.float32)), tf.int32)
        values = tf.reshape(tf.gather(flat, tf.reshape(index, tf.stack([count, -1])), batch_dims=1), shape)
        result += tf.where(inside, values * weight, 0.0)
    return result


def training_model(model: keras.Model, settings: AugmentSettings, seed: int) -> keras.Model:
    """The model ``fit`` trains with ``augment_on: device``: ``DeviceAugmentation`` then ``model``.

    It shares ``model``'s weights (``model`` is what is saved). Build it under the same dtype
    policy as ``model`` (``distribute.precision_policy``): Keras adds loss scaling at compile time
    from the compiled model's own policy.
    """
    images = keras.Input(shape=model.inputs[0].shape[1:], name="image")
    augmented = DeviceAugmentation(settings, seed=seed, name="device_augmentation")(images)
    return keras.Model(images, model(augmented), name=f"{model.name}_with_augmentation")
