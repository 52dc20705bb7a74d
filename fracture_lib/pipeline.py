"""The ``tf.data`` input pipeline: batches from the preprocessed cache, augmented on the fly.

Images come from the memory-mapped ``uint8`` cache (``cache.build_cache``), so no file is
decoded during training. The dataset walks over shuffled row numbers; each batch of rows is
gathered (``image_rows.gather_rows``: read from the cache's file) and augmented in one step: the MURA paper's random horizontal
flip and rotation up to 30 degrees (optionally zoom and shift, a random resized crop, and
contrast, brightness and gamma changes), as one affine warp per image with OpenCV. Measured on this project's 2-core CPU, ``cv2.warpAffine`` costs about
a sixth of the CPU time of TensorFlow's batched ``ImageProjectiveTransformV3`` (which Keras'
``RandomRotation`` uses), and it releases the GIL, so parallel batches use both cores (see
docs/benchmarks.md). The random parameters come from a per-batch seed drawn by ``tf.data``, so
an epoch is the same for the same ``seed`` and each epoch differs from the last.

The pipeline yields float32 ``(B, S, S, 1)`` tensors in 0..255; each model repeats grey to
three channels and normalises its input itself, so the pipeline does not depend on the backbone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import tensorflow as tf

from fracture_lib import config
from fracture_lib.boxes import BoxTargets
from fracture_lib.crops import CENTRE_JITTER
from fracture_lib.errors import ParameterError
from fracture_lib.image_rows import ImageRows, gather_rows, source_and_positions


@dataclass(frozen=True)
class AugmentSettings:
    """Random training-time transformations, drawn independently for each image."""

    flip: bool = True
    rotation_degrees: float = 30.0
    zoom: float = 0.0
    contrast: float = 0.0
    translate: float = 0.0
    brightness: float = 0.0
    gamma: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.flip, (bool, np.bool_)):
            raise ParameterError(f"flip={self.flip!r} must be true or false")
        for name, low, high, example in (("rotation_degrees", 0, 180, "30"), ("zoom", 0, 1, "0.1 for +-10%"),
                                         ("contrast", 0, 1, "0.2 for +-20%"), ("translate", 0, 0.5, "0.1 for 10% of the side"),
                                         ("brightness", 0, 1, "0.1 for +-10% of the grey range"),
                                         ("gamma", 0, 1, "0.2 for gamma in [0.83, 1.2]")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ParameterError(f"{name}={value!r} must be a number, e.g. {example}")
            inside = low <= value <= high if name == "rotation_degrees" else low <= value < high
            if not inside:
                raise ParameterError(f"{name}={value} must be in [{low}, {high}{']' if name == 'rotation_degrees' else ')'}, "
                                     f"e.g. {example}")

    @property
    def moves_pixels(self) -> bool:
        """Whether the settings flip, rotate, zoom or shift (else the geometric warp is skipped)."""
        return bool(self.flip) or self.rotation_degrees > 0 or self.zoom > 0 or self.translate > 0

    @property
    def changes_pixels(self) -> bool:
        """Whether any augmentation is on (geometric or grey-level)."""
        return self.moves_pixels or self.contrast > 0 or self.brightness > 0 or self.gamma > 0

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AugmentSettings":
        """Rebuild settings saved with ``to_dict``."""
        names = ("flip", "rotation_degrees", "zoom", "contrast", "translate", "brightness", "gamma")
        return cls(**{key: values[key] for key in names if key in values})


# Added to a batch seed for the crop draws (``crop_transforms``), which then leave the other draws unchanged.
CROP_STREAM = 7919


def _generator(seed: Any) -> np.random.Generator:
    """A NumPy generator from an integer or a pair of (possibly negative) integers."""
    values = np.atleast_1d(np.asarray(seed)).astype(np.int64).tolist()
    return np.random.default_rng([value % 2**64 for value in values])


@dataclass(frozen=True)
class GreyLevelChanges:
    """Per-image grey-level factors: contrast stretch, brightness shift (0..255 units) and gamma."""

    contrast: np.ndarray
    brightness: np.ndarray
    gamma: np.ndarray


def random_transforms(count: int, height: int, width: int, seed: Any,
                      settings: AugmentSettings) -> tuple[np.ndarray, GreyLevelChanges]:
    """Draw ``count`` random affine matrices ``(count, 2, 3)`` and grey-level changes.

    Each matrix maps an input pixel to its output position: mirror (half the images when
    ``flip``), rotate by up to ``rotation_degrees`` either way, scale by up to ``zoom`` about
    the image centre, then shift by up to ``translate`` of the side (zoom and shift together
    are a random resized crop that keeps the aspect ratio). The draws always happen in the same
    order, so a seed gives the same transformations whatever the settings switch off.
    """
    rng = _generator(seed)
    flipped = rng.random(count) < 0.5
    angles = np.deg2rad(rng.uniform(-settings.rotation_degrees, settings.rotation_degrees, count))
    scales = rng.uniform(1.0 - settings.zoom, 1.0 + settings.zoom, count)
    contrasts = rng.uniform(1.0 - settings.contrast, 1.0 + settings.contrast, count)
    # Drawn after the original four, so the older settings keep their transformations.
    shifts = rng.uniform(-settings.translate, settings.translate, (count, 2)) * np.array([width, height])
    brightness = rng.uniform(-settings.brightness, settings.brightness, count) * 255.0
    # Gamma is drawn log-uniformly, so darkening and brightening are equally likely.
    gammas = np.exp(rng.uniform(-np.log1p(settings.gamma), np.log1p(settings.gamma), count))
    mirror = np.where(flipped & bool(settings.flip), -1.0, 1.0)

    # Linear part: scale * rotation * mirror; the translation keeps the centre in place, then shifts it.
    cos, sin = np.cos(angles) * scales, np.sin(angles) * scales
    linear = np.stack([np.stack([cos * mirror, -sin], axis=1), np.stack([sin * mirror, cos], axis=1)], axis=1)
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    translation = centre - linear @ centre + shifts
    matrices = np.concatenate([linear, translation[:, :, None]], axis=2)
    return matrices, GreyLevelChanges(contrasts, brightness, gammas)


def crop_transforms(matrices: np.ndarray, points: np.ndarray, crop_size: int, height: int, width: int,
                    seed: Any) -> np.ndarray:
    """Turn ``matrices`` (``random_transforms``' warps of an H x W image) into warps onto a random crop.

    ``points`` is ``(B, K, 2)``: each image's points of interest ``(x, y)`` (``crops.crop_points``).
    For each image one point is drawn, the crop centre placed up to ``crops.CENTRE_JITTER`` of
    the crop side away from it, and that centre moved to the image centre before the flip,
    rotation, zoom and shift (which therefore turn about the crop), then to the centre of the
    ``crop_size`` output. The draws come from their own stream of ``seed``, so the other
    transformations are those of the same seed without the crop.
    """
    rng = _generator(np.append(np.atleast_1d(np.asarray(seed)).astype(np.int64), CROP_STREAM))
    count = len(matrices)
    chosen = np.asarray(points, dtype=np.float64)[np.arange(count), rng.integers(0, points.shape[1], count)]
    centres = chosen + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, (count, 2)) * crop_size
    image_centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    crop_centre = np.full(2, (crop_size - 1) / 2.0)
    linear, translation = matrices[:, :, :2], matrices[:, :, 2]
    # x -> linear @ (x + image_centre - centre) + translation - image_centre + crop_centre.
    moved = translation + np.einsum("bij,bj->bi", linear, image_centre - centres) - image_centre + crop_centre
    return np.concatenate([linear, moved[:, :, None]], axis=2)


def augment_images(images: np.ndarray, seed: Any, settings: AugmentSettings,
                   rows: np.ndarray | None = None, crop_size: int | None = None,
                   crop_points: np.ndarray | None = None) -> np.ndarray:
    """Randomly flip, rotate, zoom, shift and change the grey levels of images; return float32 (B, S, S).

    ``images`` is a uint8 or float32 array ``(N, S, S)`` (or ``(N, S, S, 1)``); with ``rows``,
    only those rows are read (``image_rows.gather_rows``: from the file, for the cache's memory
    map) and augmented. Pixels moved in from outside the image are black, like the letterbox
    padding. The result stays in 0..255.

    With ``crop_size`` each image becomes a ``crop_size`` square around one of its points of
    interest (``crop_points``, ``(B, K, 2)`` for the batch; see ``crop_transforms``): the result
    is ``(B, crop_size, crop_size)``.
    """
    if rows is not None:
        images = gather_rows(images, rows)
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    height, width = images.shape[1:3]
    matrices, grey = random_transforms(len(images), height, width, seed, settings)
    out_height, out_width = height, width
    if crop_size is not None:
        if crop_points is None or len(crop_points) != len(images):
            raise ParameterError("crop_size needs crop_points: one (K, 2) array of points per image")
        matrices = crop_transforms(matrices, crop_points, int(crop_size), height, width, seed)
        out_height = out_width = int(crop_size)
    if settings.moves_pixels or crop_size is not None:
        batch = np.empty((len(images), out_height, out_width), dtype=images.dtype)
        for position, image in enumerate(images):
            cv2.warpAffine(image, matrices[position], (out_width, out_height), dst=batch[position],
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    else:
        batch = images
    batch = batch.astype(np.float32)
    return _change_grey_levels(batch, grey, settings)


def _change_grey_levels(batch: np.ndarray, grey: GreyLevelChanges, settings: AugmentSettings) -> np.ndarray:
    """Apply gamma, then contrast about each image's mean, then a brightness shift; stay in 0..255.

    Black pixels (the letterbox padding and pixels moved in from outside) stay black under gamma
    and contrast; brightness lifts only the pixels inside the film (above 0).
    """
    if settings.gamma > 0:
        batch = 255.0 * np.power(batch / 255.0, grey.gamma[:, None, None].astype(np.float32))
    if settings.contrast > 0:
        # Stretch each image's grey levels about its own mean.
        means = batch.mean(axis=(1, 2), keepdims=True)
        batch = np.clip((batch - means) * grey.contrast[:, None, None].astype(np.float32) + means, 0.0, 255.0)
    if settings.brightness > 0:
        shift = grey.brightness[:, None, None].astype(np.float32)
        batch = np.where(batch > 0, np.clip(batch + shift, 0.0, 255.0), batch)
    return batch.astype(np.float32, copy=False)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, settings: AugmentSettings) -> tf.Tensor:
    """TensorFlow wrapper of ``augment_images`` for a batch ``(B, S, S, 1)``; returns float32.

    ``seed`` is a shape-(2,) integer tensor: the same seed gives the same transformations.
    """
    images = tf.convert_to_tensor(images)
    augmented = tf.numpy_function(lambda batch, batch_seed: augment_images(batch, batch_seed, settings),
                                  [images, seed], tf.float32, stateful=False)
    augmented.set_shape(images.shape[:3])
    return augmented[..., tf.newaxis]


def _check_inputs(images: np.ndarray, labels: Any, batch_size: int, sample_weights: Any) -> None:
    """Raise ``ParameterError`` for arrays the pipeline cannot use."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ParameterError(f"images must be a uint8 array (N, S, S), got {images.dtype} {images.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size={batch_size!r} must be a positive integer")
    for name, values in (("labels", labels), ("sample_weights", sample_weights)):
        if values is not None and len(values) != len(images):
            raise ParameterError(f"{name} has {len(values)} entries but there are {len(images)} images")
    if len(images) == 0:
        raise ParameterError("no images to make a dataset from: check the split and body part")


def make_dataset(images: np.ndarray | ImageRows, labels: np.ndarray | None = None, batch_size: int = 32,
                 training: bool = False, augment: AugmentSettings | None = None, seed: int = 42,
                 sample_weights: np.ndarray | None = None, mirror: bool = False,
                 shard: tuple[int, int] | None = None, box_targets: BoxTargets | None = None,
                 crop_size: int | None = None, crop_points: np.ndarray | None = None) -> tf.data.Dataset:
    """Return a batched, prefetched dataset of ``float32 (B, S, S, 1)`` images in 0..255.

    ``images`` is a uint8 array ``(N, S, S)`` or an ``ImageRows`` view of the cache (a split),
    whose rows are gathered batch by batch from the cache's memory map, never copied as a whole.
    Yields ``images`` alone when ``labels`` is None, else ``(images, labels)`` or
    ``(images, labels, sample_weights)``. Shuffling (reshuffled every epoch) and augmentation
    (when ``augment`` is given) happen only when ``training``; both are deterministic for a
    given ``seed``. Without ``training`` the order and the pixels are exactly the input's, or
    mirrored left to right with ``mirror`` (test-time augmentation).

    ``shard=(workers, index)`` (multi-worker training, see ``distribute.worker_datasets``) splits
    each batch of ``batch_size`` rows (the global batch, in the same shuffled order on every
    worker) into ``workers`` contiguous slices and yields slice ``index`` of each, before any image
    is gathered or augmented: the workers see disjoint rows that cover the data, and all of them
    the same number of batches (a short last batch may leave a slice empty). Its augmentation
    draws from its own seed stream, and ``tf.distribute`` does not shard it again.

    ``box_targets`` (box supervision, see ``box_supervision``) makes the images a dictionary: the
    images under ``config.IMAGE_INPUT`` and each image's grid target under ``config.BOX_TARGET_INPUT``,
    its boxes moved by the same flip, rotation, zoom and shift as the image.

    ``crop_size`` with ``training`` yields ``crop_size`` squares instead (training on crops, see
    ``crops``): each image's crop lies around one of its points of interest, ``crop_points[i]``
    (``(K, 2)``, from ``crops.crop_points``), drawn afresh every epoch.
    """
    if not isinstance(images, (ImageRows, np.ndarray)):
        images = np.asarray(images)
    _check_inputs(images, labels, batch_size, sample_weights)
    if box_targets is not None and len(box_targets) != len(images):
        raise ParameterError(f"box_targets has {len(box_targets)} entries but there are {len(images)} images")
    if mirror and training and augment is not None and augment.changes_pixels:
        # Augmented batches are drawn fresh and already flipped at random; a mirror would be ignored.
        raise ParameterError("mirror=True is test-time augmentation: use it without training augmentation "
                             "(training=False, or augment=None)")
    count, size = len(images), images.shape[1:]
    cropping = training and crop_size is not None
    if cropping:
        crop_points = _check_crop(crop_size, crop_points, count, size, box_targets)
        size = (int(crop_size), int(crop_size))
        # A crop is a warp: without other augmentation it is the only transformation.
        augment = augment if augment is not None else AugmentSettings(flip=False, rotation_degrees=0.0)
    # Batches are gathered from the whole array; a view maps its row numbers to the array's.
    source, offsets = source_and_positions(images)

    def source_rows(positions: np.ndarray) -> np.ndarray:
        return positions if offsets is None else offsets[positions]

    def plain_batch(positions: np.ndarray) -> np.ndarray:
        batch = gather_rows(source, source_rows(positions))
        return np.ascontiguousarray(batch[:, :, ::-1]) if mirror else batch
    augmenting = cropping or (training and augment is not None and augment.changes_pixels)

    # The dataset walks over row numbers and gathers each batch from the NumPy array: cheap to
    # shuffle, and it works for caches larger than TensorFlow's 2 GB limit on constants.
    rows = tf.data.Dataset.range(count)
    if training:
        rows = rows.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    rows = rows.batch(int(batch_size))
    workers, worker = _check_shard(shard)
    if workers > 1:
        def worker_slice(batch_rows: tf.Tensor) -> tf.Tensor:
            length = tf.shape(batch_rows, out_type=tf.int64)[0]
            return batch_rows[worker * length // workers:(worker + 1) * length // workers]

        rows = rows.map(worker_slice)
    label_tensor = None if labels is None else tf.constant(np.asarray(labels))
    weight_tensor = None if sample_weights is None else tf.constant(np.asarray(sample_weights, dtype=np.float32))

    def gather(batch_rows: tf.Tensor, batch_seed: tf.Tensor | None) -> tf.Tensor:
        if batch_seed is None:
            batch = tf.numpy_function(plain_batch, [batch_rows], tf.uint8, stateful=False)
        else:
            # The crop's arguments are passed only when cropping.
            crop = (lambda positions: {"crop_size": size[0], "crop_points": crop_points[positions]}) if cropping \
                else (lambda positions: {})
            batch = tf.numpy_function(
                lambda positions, pair: augment_images(source, pair, augment, rows=source_rows(positions),
                                                       **crop(positions)),
                [batch_rows, batch_seed], tf.float32, stateful=False)
        batch.set_shape([None, *size])
        return tf.cast(batch, tf.float32)[..., tf.newaxis]

    def targets(batch_rows: tf.Tensor, batch_seed: tf.Tensor | None) -> tf.Tensor:
        def grid_targets(positions: np.ndarray, pair: np.ndarray | None = None) -> np.ndarray:
            # The same seed and count give augment_images' matrices again, so the boxes move with the image.
            matrices = None if pair is None or not augment.moves_pixels else \
                random_transforms(len(positions), size[0], size[1], pair, augment)[0]
            return box_targets.batch(positions, matrices)

        arguments = [batch_rows] if batch_seed is None else [batch_rows, batch_seed]
        grid = tf.numpy_function(grid_targets, arguments, tf.float32, stateful=False)
        grid.set_shape([None, *box_targets.grid, 2])
        return grid

    def assemble(batch_rows: tf.Tensor, batch_seed: tf.Tensor | None = None) -> Any:
        batch = gather(batch_rows, batch_seed)
        if box_targets is not None:
            batch = {config.IMAGE_INPUT: batch, config.BOX_TARGET_INPUT: targets(batch_rows, batch_seed)}
        if label_tensor is None:
            return batch
        outputs = (batch, tf.gather(label_tensor, batch_rows))
        if weight_tensor is not None:
            outputs += (tf.gather(weight_tensor, batch_rows),)
        return outputs

    if augmenting:
        # One pair of random integers per batch seeds that batch's transformations.
        seeds = tf.data.Dataset.random(seed=seed + worker, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((rows, seeds))
    else:
        dataset = rows
    dataset = dataset.map(assemble, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shard is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        dataset = dataset.with_options(options)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_crop(crop_size: Any, crop_points: Any, count: int, size: tuple[int, ...],
                box_targets: BoxTargets | None) -> np.ndarray:
    """Return ``crop_points`` as an array after checking it and ``crop_size`` against the images."""
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or not 0 < crop_size < min(size):
        raise ParameterError(f"crop_size={crop_size!r} must be a whole number of pixels below the image side {min(size)}")
    points = None if crop_points is None else np.asarray(crop_points, dtype=np.float32)
    if points is None or points.ndim != 3 or points.shape[0] != count or points.shape[2] != 2 or points.shape[1] < 1:
        raise ParameterError(f"crop_points must be an array (images, points, 2) with {count} images; "
                             f"got {None if points is None else points.shape}")
    if box_targets is not None:
        raise ParameterError("box supervision and training on crops cannot be combined: the box grid is the whole film's")
    return points


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """Return ``(workers, index)`` of a shard (``(1, 0)`` for None); raise ``ParameterError`` for a bad one."""
    if shard is None:
        return 1, 0
    try:
        workers, index = (int(value) for value in shard)
    except (TypeError, ValueError):
        raise ParameterError(f"shard={shard!r} must be a pair (workers, index), e.g. (2, 0)") from None
    if workers < 1 or not 0 <= index < workers:
        raise ParameterError(f"shard={shard!r}: the index must be in 0..workers-1 and workers at least 1")
    return workers, index
