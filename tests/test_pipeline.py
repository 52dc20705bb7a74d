"""The tf.data pipeline: shapes, ranges, determinism and batched augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fracture_lib.errors import ParameterError
from fracture_lib.pipeline import AugmentSettings, augment_batch, augment_images, make_dataset, random_transforms


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


def test_evaluation_never_augments_or_shuffles_and_features_only_without_labels() -> None:
    images = _images(10)
    batches = [x.numpy() for x in make_dataset(images, batch_size=4, augment=AugmentSettings(contrast=0.5))]
    np.testing.assert_array_equal(np.concatenate(batches)[..., 0], images.astype(np.float32))


def test_training_without_augmentation_only_shuffles() -> None:
    images = _images(12)
    labels = np.arange(12)
    for x, y in make_dataset(images, labels, 5, training=True, seed=0):
        np.testing.assert_array_equal(x.numpy()[..., 0], images[y.numpy()].astype(np.float32))


def test_sharded_datasets_split_each_batch_into_disjoint_covering_slices() -> None:
    images, labels = _images(33), np.arange(33, dtype=np.float32)
    whole = [y.numpy() for _, y in make_dataset(images, labels, 8, training=True, seed=4)]
    for workers in (2, 3):
        shards = [list(make_dataset(images, labels, 8, training=True, augment=AugmentSettings(), seed=4,
                                    shard=(workers, index))) for index in range(workers)]
        # One batch per global batch on every worker (the last global batch holds 1 image, so some slices are empty).
        assert [len(shard) for shard in shards] == [len(whole)] * workers == [5] * workers
        for step, rows in enumerate(whole):
            slices = [shard[step][1].numpy() for shard in shards]
            # The workers' slices are the global batch, in order: disjoint, and together all of it.
            np.testing.assert_array_equal(np.concatenate(slices), rows)
            assert all(shard[step][0].shape == (len(piece), 32, 32, 1) for shard, piece in zip(shards, slices))
        assert min(len(shard[-1][1]) for shard in shards) == 0
    # Without training the slices keep the input's order and pixels; tf.distribute must not shard again.
    dataset = make_dataset(images, labels, 8, shard=(2, 1))
    assert dataset.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
    x, y = next(iter(dataset))
    np.testing.assert_array_equal(y.numpy(), labels[4:8])
    np.testing.assert_array_equal(x.numpy()[..., 0], images[4:8].astype(np.float32))
    for shard in ((2, 2), (0, 0), ("two", 0)):
        with pytest.raises(ParameterError, match="shard="):
            make_dataset(images, labels, 8, shard=shard)


def test_memory_mapped_cache_feeds_the_pipeline(tmp_path) -> None:
    np.save(tmp_path / "images.npy", _images(6))
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    x = next(iter(make_dataset(mapped, batch_size=6)))
    np.testing.assert_array_equal(x.numpy()[..., 0], _images(6).astype(np.float32))


def test_zoom_and_contrast_stay_in_range_and_are_seeded() -> None:
    images = _images(8)
    settings = AugmentSettings(zoom=0.2, contrast=0.4)
    first = augment_images(images, [1, 2], settings)
    assert first.dtype == np.float32 and first.shape == (8, 32, 32)
    assert first.min() >= 0 and first.max() <= 255
    np.testing.assert_array_equal(first, augment_images(images, [1, 2], settings))
    assert not np.array_equal(first, augment_images(images, [1, 3], settings))
    # Contrast alone keeps each image's mean grey level (up to clipping) and changes its spread.
    contrast_only = augment_images(images, 5, AugmentSettings(flip=False, rotation_degrees=0, contrast=0.4))
    assert not np.array_equal(contrast_only, images.astype(np.float32))
    np.testing.assert_allclose(contrast_only.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=8)


def test_transforms_rotate_about_the_centre_within_the_limit() -> None:
    matrices, _ = random_transforms(200, 33, 33, 0, AugmentSettings(flip=False, rotation_degrees=30))
    centre = np.array([16.0, 16.0, 1.0])
    np.testing.assert_allclose(matrices @ centre, np.tile([16.0, 16.0], (200, 1)), atol=1e-9)
    angles = np.degrees(np.arctan2(matrices[:, 1, 0], matrices[:, 0, 0]))
    assert np.abs(angles).max() <= 30 and np.abs(angles).max() > 25
    flips, _ = random_transforms(200, 33, 33, 0, AugmentSettings(rotation_degrees=0))
    mirrored = flips[:, 0, 0] < 0
    assert 60 < mirrored.sum() < 140


def test_shift_brightness_and_gamma_stay_within_their_limits() -> None:
    settings = AugmentSettings(flip=False, rotation_degrees=0, translate=0.1, brightness=0.2, gamma=0.5)
    matrices, grey = random_transforms(300, 40, 40, 0, settings)
    # The shift moves the centre by at most 10% of the side; the linear part stays the identity.
    shifts = matrices[:, :, 2]
    assert np.abs(shifts).max() <= 4.0 + 1e-9 and np.abs(shifts).max() > 3.0
    np.testing.assert_allclose(matrices[:, :, :2], np.tile(np.eye(2), (300, 1, 1)), atol=1e-12)
    assert np.abs(grey.brightness).max() <= 0.2 * 255 and grey.gamma.min() >= 1 / 1.5 - 1e-9 and grey.gamma.max() <= 1.5 + 1e-9
    # The settings added later do not change what a seed gives the older ones.
    old, _ = random_transforms(50, 40, 40, 7, AugmentSettings(rotation_degrees=20, zoom=0.1))
    new, _ = random_transforms(50, 40, 40, 7, AugmentSettings(rotation_degrees=20, zoom=0.1, brightness=0.2, gamma=0.3))
    np.testing.assert_array_equal(old, new)


def test_grey_level_changes_keep_the_padding_black() -> None:
    images = np.zeros((6, 24, 24), dtype=np.uint8)
    images[:, 4:20, 4:20] = 120
    settings = AugmentSettings(flip=False, rotation_degrees=0, brightness=0.3, gamma=0.5, contrast=0.0)
    augmented = augment_images(images, 3, settings)
    assert np.all(augmented[:, :4, :] == 0) and np.all(augmented[:, :, :4] == 0)
    inside = augmented[:, 4:20, 4:20]
    assert inside.min() >= 0 and inside.max() <= 255 and len(np.unique(inside[:, 0, 0])) > 1
    np.testing.assert_array_equal(augmented, augment_images(images, 3, settings))
    with pytest.raises(ParameterError, match="translate=0.7"):
        AugmentSettings(translate=0.7)


def test_naive_loader_decodes_every_image_each_epoch(tmp_path) -> None:
    import cv2

    from fracture_lib import bench

    paths = []
    for number in range(5):
        paths.append(tmp_path / f"image{number}.png")
        cv2.imwrite(str(paths[-1]), np.full((30, 20), 40 * number + 10, dtype=np.uint8))
    labels = np.arange(5, dtype=np.float32)
    batches = list(bench.naive_batches(paths, labels, img_size=16, batch_size=2, seed=0, epochs=2))
    assert [len(x) for x, _, _ in batches] == [2, 2, 1, 2, 2, 1]
    x, y, w = batches[0]
    assert x.shape == (2, 16, 16, 1) and x.dtype == np.float32 and x.max() <= 255 and (w == 1).all()
    first_epoch = np.concatenate([y for _, y, _ in batches[:3]])
    assert sorted(first_epoch) == list(labels)
    results = bench.write_results({"value": np.float32(1.5)}, tmp_path / "out" / "bench.json")
    assert results.read_text().strip().endswith("}") and not list((tmp_path / "out").glob(".*"))


def test_mirror_with_training_augmentation_is_refused() -> None:
    images = _images()
    with pytest.raises(ParameterError, match="mirror=True is test-time augmentation"):
        make_dataset(images, batch_size=8, training=True, augment=AugmentSettings(), mirror=True)
    # Without augmentation the mirror still applies to shuffled training batches.
    batch = next(iter(make_dataset(images, np.arange(40, dtype=np.float32), 8, training=True, mirror=True)))
    rows = batch[1].numpy().astype(int)
    np.testing.assert_array_equal(batch[0].numpy()[..., 0], images[rows][:, :, ::-1].astype(np.float32))
