"""The tf.data pipeline: shapes, ranges, determinism and batched augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fracture_lib.errors import ParameterError
from fracture_lib.pipeline import AugmentSettings, augment_batch, make_dataset


def _images(count: int = 40, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
    images[:, 8:24, 14:18] = 255
    return images


def test_evaluation_dataset_keeps_order_and_values() -> None:
    images = _images()
    labels = np.arange(40, dtype=np.float32)
    batches = list(make_dataset(images, labels, batch_size=16))
    assert [len(x) for x, _ in batches] == [16, 16, 8]
    x, y = batches[0]
    assert x.dtype == tf.float32 and x.shape == (16, 32, 32, 1)
    np.testing.assert_array_equal(x.numpy()[..., 0], images[:16].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in batches]), labels)


def test_training_dataset_shuffles_augments_and_is_seeded() -> None:
    images = _images()
    labels = np.arange(40, dtype=np.float32)
    weights = np.linspace(0.5, 1.5, 40).astype(np.float32)

    def first_epoch(seed: int):
        dataset = make_dataset(images, labels, 8, training=True, augment=AugmentSettings(), seed=seed,
                               sample_weights=weights)
        return [tuple(part.numpy() for part in batch) for batch in dataset]

    first, again, other = first_epoch(1), first_epoch(1), first_epoch(2)
    order = np.concatenate([y for _, y, _ in first])
    assert sorted(order) == list(labels) and not np.array_equal(order, labels)
    np.testing.assert_array_equal(first[0][0], again[0][0])
    assert not np.array_equal(first[0][0], other[0][0])
    # Weights travel with their images.
    np.testing.assert_allclose(first[0][2], weights[first[0][1].astype(int)])
    # Augmented images differ from the originals but keep shape and range.
    x = first[0][0]
    assert x.shape == (8, 32, 32, 1) and x.min() >= 0 and x.max() <= 255
    originals = images[first[0][1].astype(int)].astype(np.float32)
    assert not np.array_equal(x[..., 0], originals)


def test_epochs_reshuffle() -> None:
    dataset = make_dataset(_images(), np.arange(40), 40, training=True, seed=3)
    first, second = [y.numpy() for _, y in dataset], [y.numpy() for _, y in dataset]
    assert not np.array_equal(first[0], second[0])


def test_flip_only_mirrors_exactly() -> None:
    image = np.zeros((1, 16, 16, 1), dtype=np.float32)
    image[0, 2:6, 1:3, 0] = 200.0
    settings = AugmentSettings(flip=True, rotation_degrees=0.0)
    results = [augment_batch(tf.constant(image), tf.constant([seed, 0]), settings).numpy() for seed in range(12)]
    mirrored = image[:, :, ::-1, :]
    assert any(np.allclose(result, mirrored) for result in results)
    assert any(np.allclose(result, image) for result in results)
    assert all(np.allclose(result, image) or np.allclose(result, mirrored) for result in results)


def test_rotation_keeps_mass_near_centre() -> None:
    image = np.zeros((4, 33, 33, 1), dtype=np.float32)
    image[:, 12:21, 12:21, 0] = 255.0
    rotated = augment_batch(tf.constant(image), tf.constant([5, 7]), AugmentSettings(flip=False)).numpy()
    # A centred square rotated by at most 30 degrees stays inside the image with similar area.
    assert np.allclose(rotated.sum(axis=(1, 2, 3)), image.sum(axis=(1, 2, 3)), rtol=0.1)


def test_bad_arguments_are_reported() -> None:
    with pytest.raises(ParameterError, match="uint8"):
        make_dataset(np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(ParameterError, match="labels has 3 entries"):
        make_dataset(np.zeros((2, 8, 8), dtype=np.uint8), np.zeros(3))
    with pytest.raises(ParameterError, match="rotation_degrees"):
        AugmentSettings(rotation_degrees=-1)
