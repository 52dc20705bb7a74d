"""Augmentation in the training step (augment_on: device): the warp, the layer, and a run with XLA."""

from __future__ import annotations

from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from fracture_lib import datasets, train
from fracture_lib.device_augment import DeviceAugmentation, _warp, training_model
from fracture_lib.models import build_model
from fracture_lib.pipeline import AugmentSettings
from fracture_lib.runs import load_run


def _smooth_images(count: int, size: int = 33) -> np.ndarray:
    rows, columns = np.mgrid[0:size, 0:size]
    image = 200.0 * np.exp(-((columns - 12) ** 2 + (rows - 18) ** 2) / 60.0) + 40.0 * columns / size
    return np.repeat(image[None].astype(np.float32), count, axis=0)


def test_warp_is_opencvs_affine_warp() -> None:
    images = _smooth_images(5)
    mirror = np.array([-1, 1, -1, 1, -1], np.float32)
    angles = np.radians([0, 20, -25, 10, 30]).astype(np.float32)
    scales = np.array([1.0, 1.1, 0.9, 1.0, 1.2], np.float32)
    shifts = np.array([[0, 0], [2, -3], [0, 1.5], [-4, 0], [1, 1]], np.float32)
    warped = _warp(tf.constant(images), tf.constant(mirror), tf.constant(angles), tf.constant(scales),
                   tf.constant(shifts)).numpy()
    size = images.shape[1]
    centre = np.full(2, (size - 1) / 2.0)
    for position in range(len(images)):
        # The matrix pipeline.random_transforms builds for these draws (input pixel -> output position).
        cos, sin = np.cos(angles[position]) * scales[position], np.sin(angles[position]) * scales[position]
        linear = np.array([[cos * mirror[position], -sin], [sin * mirror[position], cos]])
        matrix = np.concatenate([linear, (centre - linear @ centre + shifts[position])[:, None]], axis=1)
        expected = cv2.warpAffine(images[position], matrix, (size, size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        np.testing.assert_allclose(warped[position], expected, atol=1e-3)
    np.testing.assert_array_equal(warped[0], images[0][:, ::-1])


def test_layer_augments_only_in_training_and_is_seeded() -> None:
    images = tf.constant(_smooth_images(16)[..., None])
    settings = AugmentSettings(rotation_degrees=20.0, zoom=0.1, translate=0.1, contrast=0.2, brightness=0.1, gamma=0.2)
    layer = DeviceAugmentation(settings, seed=3)
    assert layer(images, training=False) is images
    first, second = layer(images, training=True).numpy(), layer(images, training=True).numpy()
    assert first.shape == (16, 33, 33, 1) and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 255
    # Every image gets its own transformation, each call new ones, and the same seed the same ones.
    assert not np.allclose(first[0], first[1]) and not np.allclose(first, second)
    np.testing.assert_array_equal(DeviceAugmentation(settings, seed=3)(images, training=True).numpy(), first)
    # Flips alone mirror exactly, about half the images.
    flipped = DeviceAugmentation(AugmentSettings(rotation_degrees=0.0), seed=0)(images, training=True).numpy()
    mirrored = np.array([np.array_equal(result, images.numpy()[0, :, ::-1]) for result in flipped])
    unchanged = np.array([np.array_equal(result, images.numpy()[0]) for result in flipped])
    assert (mirrored | unchanged).all() and 0 < mirrored.sum() < 16
    # Black padding stays black under gamma, contrast and brightness.
    padded = np.zeros((4, 24, 24, 1), np.float32)
    padded[:, 4:20, 4:20] = 120.0
    grey = DeviceAugmentation(AugmentSettings(flip=False, rotation_degrees=0.0, brightness=0.3, gamma=0.5), seed=1)
    result = grey(tf.constant(padded), training=True).numpy()
    assert (result[:, :4] == 0).all() and (result[:, :, :4] == 0).all() and len(np.unique(result[:, 10, 10])) > 1


def test_training_model_shares_the_weights_and_predicts_like_the_model() -> None:
    model = build_model("small_cnn", 32, seed=0)
    wrapper = training_model(model, AugmentSettings(), seed=0)
    assert {id(variable) for variable in wrapper.trainable_variables} == {id(variable) for variable in model.trainable_variables}
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype(np.float32)
    # At inference the augmentation is inert: the wrapper is the model.
    np.testing.assert_array_equal(wrapper.predict(images, verbose=0), model.predict(images, verbose=0))


class _Spy(keras.callbacks.Callback):
    """Records whether the fitted model is compiled with XLA and holds the augmentation layer."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.jit_compile = self.model.jit_compile
        self.layers = [type(layer).__name__ for layer in self.model.layers]


@pytest.mark.slow
def test_device_augmentation_run_with_xla(tiny_demo_root: Path, tmp_path: Path, monkeypatch) -> None:
    datasets_made = []

    def recording_make_dataset(*args, **kwargs):
        dataset = make_dataset(*args, **kwargs)
        datasets_made.append((args, kwargs, dataset))
        return dataset

    make_dataset = train.make_dataset
    monkeypatch.setattr(train, "make_dataset", recording_make_dataset)
    spy = _Spy()
    result = train.train_model(
        train.TrainConfig(body_part="elbow", img_size=32, epochs=1, batch_size=16, seed=0, split_seed=0,
                          data_dir=str(tiny_demo_root), run_name="device", augment_on="device", jit_compile=True,
                          zoom=0.1, contrast=0.2),
        models_dir=tmp_path / "models", verbose=0, extra_callbacks=[spy])
    # The training step was compiled with XLA and augmented on the device ...
    assert spy.jit_compile is True and "DeviceAugmentation" in spy.layers
    assert np.isfinite(result.history["loss"]).all() and result.config["augment_on"] == "device"
    # ... while the pipeline only shuffled: every training image it yields is a cached image, unchanged.
    args, kwargs, dataset = next(item for item in datasets_made if item[1].get("training"))
    assert kwargs["augment"] is None
    cached = {image.tobytes() for image in np.asarray(args[0]).astype(np.float32)}
    batches = [images.numpy()[..., 0] for images, _, _ in dataset]
    assert sum(len(batch) for batch in batches) == len(cached)
    assert all(image.tobytes() in cached for batch in batches for image in batch)

    # model.keras is the plain model, no augmentation inside: reloaded, it predicts what the trained model
    # predicted for the validation images, and a second reload predicts the same for an image.
    run = load_run(result.run_dir)
    assert [layer.name for layer in run.model.layers] == [layer.name for layer in build_model("small_cnn", 32).layers]
    index = datasets.build_index(tiny_demo_root, seed=0)
    again = train.predict_split(run, index, tiny_demo_root, split="val", cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(again["probability"], pd.read_csv(result.run_dir / "val_predictions.csv")["probability"],
                               atol=1e-6)
    image = np.asarray(args[0])[:1].astype(np.float32)[..., None]
    reloaded = keras.saving.load_model(result.run_dir / "model.keras", compile=False)
    np.testing.assert_array_equal(run.model.predict(image, verbose=0), reloaded.predict(image, verbose=0))
