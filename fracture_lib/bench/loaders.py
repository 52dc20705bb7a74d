"""Data-only throughput: images/s each loader delivers with no model attached.

Every loader gets the same images, batch size and augmentation (a random horizontal flip and a
rotation up to 30 degrees, black fill), so only the way the pixels are produced differs:

- ``pipeline``: ours, ``pipeline.make_dataset`` on the preprocessed cache (gather rows, one
  OpenCV warp per image, in parallel ``tf.data`` batches);
- ``tf_data_files``: the ``tf.data`` loader a user would write instead: file paths, a parallel
  ``map`` that reads, decodes (``decode_png``, one channel), letterboxes (``resize_with_pad``) and
  flips, batches, then ``keras.layers.RandomRotation`` per batch, and prefetch;
- ``image_dataset_from_directory``: Keras' own folder loader (grey, padded to the aspect ratio)
  on a folder of links to the same files, then Keras' flip and rotation layers, and prefetch;
- ``original_serial``: the original project's loader, a serial Python generator that decodes,
  resizes and augments every image every epoch with the same OpenCV functions as the cache.

Each loader runs one untimed pass (thread start-up, the files into the page cache), then several
timed passes; the best and the median are reported with the CPU time per image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from fracture_lib import config
from fracture_lib.bench.measure import Measurement, best, measure, summary
from fracture_lib.errors import ParameterError

if TYPE_CHECKING:
    from fracture_lib.bench import Context

AUGMENTATION = "random horizontal flip + rotation up to 30 degrees (black fill)"
ROTATION_DEGREES = 30.0
# Class folders of image_dataset_from_directory, in label order (0 normal, 1 abnormal).
CLASS_NAMES = ("normal", "abnormal")
LOADER_LABELS = {
    "pipeline": "ours: pipeline.make_dataset on the cache",
    "tf_data_files": "tf.data from files (parallel decode, resize_with_pad, flip; RandomRotation per batch; prefetch)",
    "image_dataset_from_directory": "keras.utils.image_dataset_from_directory + RandomFlip, RandomRotation; prefetch",
    "original_serial": "the original project's loader (serial)",
}


# ---------------------------------------------------------------------------------------------
# The loaders
# ---------------------------------------------------------------------------------------------


def naive_batches(paths: list[Path], labels: np.ndarray, img_size: int, batch_size: int = 32,
                  seed: int = config.DEFAULT_SEED, epochs: int | None = None) -> Iterator[tuple[np.ndarray, ...]]:
    """The original project's loader: decode, resize and augment every image every epoch in Python.

    Yields ``(images float32 (B, S, S, 1), labels, sample weights)`` in a new random order each
    epoch, forever when ``epochs`` is None. It calls the same functions as the cache and the
    pipeline (OpenCV decoding, one affine warp per image), so only the repeated work differs.
    """
    from fracture_lib.pipeline import AugmentSettings, augment_images
    from fracture_lib.preprocess import PreprocessSettings, load_and_preprocess

    settings, augment = PreprocessSettings(img_size=img_size), AugmentSettings()
    rng = np.random.default_rng(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = rng.permutation(len(paths))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            images = np.stack([load_and_preprocess(paths[row], settings) for row in rows])
            images = np.stack([augment_images(image[np.newaxis], rng.integers(2**62), augment)[0] for image in images])
            yield images[..., np.newaxis], labels[rows], np.ones(len(rows), dtype=np.float32)
        epoch += 1


def _check_loader_arguments(paths: Sequence[Any], labels: np.ndarray, img_size: int, batch_size: int) -> None:
    """Raise ``ParameterError`` for inputs no loader can use."""
    if len(paths) == 0:
        raise ParameterError("no image paths to load")
    if len(labels) != len(paths):
        raise ParameterError(f"{len(labels)} labels for {len(paths)} images")
    for name, value in (("img_size", img_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ParameterError(f"{name}={value!r} must be a positive integer")


def _rotation_layer(seed: int) -> Any:
    """Keras' rotation up to 30 degrees either way, filling with black like our warp."""
    import keras

    return keras.layers.RandomRotation(ROTATION_DEGREES / 360.0, fill_mode="constant", fill_value=0.0, seed=seed)


def tf_data_from_files(paths: Sequence[str | os.PathLike[str]], labels: np.ndarray, img_size: int,
                       batch_size: int = 32, seed: int = config.DEFAULT_SEED, augment: bool = True,
                       shuffle: bool = True) -> Any:
    """The ``tf.data`` loader a user would write: decode files in parallel every epoch, then augment.

    Yields ``(images float32 (B, S, S, 1) in 0..255, labels)``: each file is read, decoded to
    one channel, letterboxed to ``img_size`` (``resize_with_pad``) and randomly flipped in a
    parallel ``map``; each batch is rotated by ``keras.layers.RandomRotation``; batches are
    prefetched. ``augment=False`` leaves out the flip and the rotation; ``shuffle`` (each epoch)
    is what training needs and costs next to nothing on paths.
    """
    import tensorflow as tf

    _check_loader_arguments(paths, labels, img_size, batch_size)
    size = int(img_size)

    def decode(path: Any, label: Any) -> tuple[Any, Any]:
        # decode_png reads JPEG files too (the header decides), so FracAtlas works unchanged.
        image = tf.io.decode_png(tf.io.read_file(path), channels=1)
        image = tf.image.resize_with_pad(image, size, size)
        if augment:
            image = tf.image.random_flip_left_right(image, seed=seed)
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices(([str(path) for path in paths], np.asarray(labels, dtype=np.float32)))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(int(batch_size))
    if augment:
        rotate = _rotation_layer(seed)
        dataset = dataset.map(lambda images, batch_labels: (rotate(images, training=True), batch_labels),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def link_class_folders(paths: Sequence[str | os.PathLike[str]], labels: np.ndarray,
                       folder: str | os.PathLike[str]) -> Path:
    """Make ``folder/normal/`` and ``folder/abnormal/`` hold symbolic links to ``paths`` by label.

    ``image_dataset_from_directory`` takes labels from class folders; links give it the very same
    files. The links are numbered in input order (``000007.png``), so an unshuffled directory
    dataset lists each class's images in that order.
    """
    folder = Path(folder)
    for name in CLASS_NAMES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for position, (path, label) in enumerate(zip(paths, labels)):
        if label not in (0, 1):
            raise ParameterError(f"label {label!r} of {path}: image_dataset_from_directory needs 0 or 1 here")
        link = folder / CLASS_NAMES[int(label)] / f"{position:06d}{Path(path).suffix.lower()}"
        if not link.is_symlink():
            link.symlink_to(Path(path).resolve())
    return folder


def directory_dataset(paths: Sequence[str | os.PathLike[str]], labels: np.ndarray, img_size: int,
                      folder: str | os.PathLike[str], batch_size: int = 32, seed: int = config.DEFAULT_SEED,
                      augment: bool = True, shuffle: bool = True) -> Any:
    """``keras.utils.image_dataset_from_directory`` on links to ``paths``, with Keras' flip and rotation.

    Yields ``(images float32 (B, S, S, 1) in 0..255, labels)``: grey images padded to a square
    (``pad_to_aspect_ratio``) and resized to ``img_size``, then ``RandomFlip("horizontal")`` and
    ``RandomRotation`` per batch (``augment``), prefetched. The links live in ``folder``.
    """
    import keras
    import tensorflow as tf

    _check_loader_arguments(paths, labels, img_size, batch_size)
    root = link_class_folders(paths, np.asarray(labels).astype(int), folder)
    dataset = keras.utils.image_dataset_from_directory(
        str(root), labels="inferred", label_mode="int", class_names=list(CLASS_NAMES), color_mode="grayscale",
        batch_size=int(batch_size), image_size=(int(img_size), int(img_size)), shuffle=shuffle, seed=seed,
        pad_to_aspect_ratio=True, verbose=False)
    if augment:
        flip, rotate = keras.layers.RandomFlip("horizontal", seed=seed), _rotation_layer(seed + 1)
        dataset = dataset.map(lambda images, batch_labels: (rotate(flip(images, training=True), training=True),
                                                            batch_labels), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def count_images(batches: Any) -> int:
    """Consume an iterable of batches and return how many images it held."""
    return sum(int(batch[0].shape[0]) for batch in batches)


def dataset_throughput(dataset: Any, passes: int = 2) -> list[Measurement]:
    """Time ``passes`` full passes over a (finite) dataset, after one untimed pass."""
    count_images(dataset)
    return [measure(lambda: count_images(dataset)) for _ in range(passes)]


def pipeline_throughput(images: Any, batch_size: int = 32, passes: int = 2,
                        seed: int = config.DEFAULT_SEED) -> list[Measurement]:
    """Time ``passes`` epochs of the augmented training pipeline over cached ``images`` (no model).

    One untimed epoch comes first, so thread start-up is not counted.
    """
    from fracture_lib.pipeline import AugmentSettings, make_dataset

    labels = np.zeros(len(images), dtype=np.float32)
    dataset = make_dataset(images, labels, batch_size, training=True, augment=AugmentSettings(), seed=seed)
    return dataset_throughput(dataset, passes)


def naive_throughput(paths: list[Path], img_size: int, batch_size: int = 32, passes: int = 1,
                     seed: int = config.DEFAULT_SEED) -> list[Measurement]:
    """Time ``passes`` epochs of the original serial loader (decode, resize, augment every image)."""
    labels = np.zeros(len(paths), dtype=np.float32)
    return [measure(lambda: count_images(naive_batches(paths, labels, img_size, batch_size, seed, epochs=1)))
            for _ in range(passes)]


def throughput_row(loader: str, measurements: list[Measurement]) -> dict[str, Any]:
    """One table row (``loader``, images, best images/s, CPU ms per image) of timed passes."""
    fastest = best(measurements)
    return {"loader": loader, "images": fastest.items, "seconds": round(fastest.seconds, 3),
            "images_per_second": round(fastest.rate, 1), "cpu_ms_per_image": round(fastest.cpu_ms_per_item, 3)}


def _ratio(numerator: dict[str, Any], denominator: dict[str, Any], key: str = "images_per_second") -> float:
    """How many times faster one loader's summary is than another's."""
    return round(numerator[key] / denominator[key], 2) if denominator[key] > 0 else float("nan")


def bench_data_throughput(context: Context) -> list[dict[str, Any]]:
    """Images/s of every loader with no model, at each size: ours against the loaders a user would pick.

    Ours, ``tf.data`` from files and ``image_dataset_from_directory`` read the same
    ``throughput_images`` images; the serial original loader, being slow, the first
    ``naive_images`` of them. Ratios are ours over each other loader, best over best (and
    median over median).
    """
    plan, results = context.plan, []
    for img_size in plan.sizes:
        cache = context.caches[img_size]
        count = min(plan.throughput_images, len(cache.index))
        frame = cache.index.iloc[:count]
        paths, labels = context.paths(frame), frame["label"].to_numpy(dtype=np.float32)
        folder = context.cache_dir / f"directory-loader-{img_size}px"
        timed = {
            "pipeline": pipeline_throughput(cache.images[:count], plan.batch_size, plan.throughput_passes, context.seed),
            "tf_data_files": dataset_throughput(tf_data_from_files(paths, labels, img_size, plan.batch_size, context.seed),
                                                plan.throughput_passes),
            "image_dataset_from_directory": dataset_throughput(
                directory_dataset(paths, labels, img_size, folder, plan.batch_size, context.seed), plan.throughput_passes),
            "original_serial": naive_throughput(paths[:plan.naive_images], img_size, plan.batch_size,
                                                plan.throughput_passes, context.seed),
        }
        loaders = {name: {"label": LOADER_LABELS[name], **summary(measured)} for name, measured in timed.items()}
        ours = loaders["pipeline"]
        result = {"img_size": img_size, "batch_size": plan.batch_size, "images": count, "augmentation": AUGMENTATION,
                  "loaders": loaders,
                  "ours_to_tf_data_files": _ratio(ours, loaders["tf_data_files"]),
                  "ours_to_tf_data_files_median": _ratio(ours, loaders["tf_data_files"], "median_images_per_second"),
                  "ours_to_image_dataset_from_directory": _ratio(ours, loaders["image_dataset_from_directory"]),
                  "ours_to_original_serial": _ratio(ours, loaders["original_serial"]),
                  # What two otherwise idle cores would sustain at the measured CPU cost per image.
                  "pipeline_two_core_capacity": round(2000.0 / ours["cpu_ms_per_image"], 0)}
        for name, loader in loaders.items():
            context.log(f"data only {img_size:>3} px, {loader['label']}: {loader['images_per_second']:.0f} images/s "
                        f"(median {loader['median_images_per_second']:.0f}, {loader['cpu_ms_per_image']:.3f} CPU ms/image)")
        context.log(f"data only {img_size:>3} px: ours / tf.data from files = {result['ours_to_tf_data_files']:.1f}x "
                    f"(medians {result['ours_to_tf_data_files_median']:.1f}x), ours / image_dataset_from_directory = "
                    f"{result['ours_to_image_dataset_from_directory']:.1f}x, ours / the original serial loader = "
                    f"{result['ours_to_original_serial']:.1f}x")
        results.append(result)
    return results
