"""Every architecture builds, runs a batch, exposes its Grad-CAM layer and reports bad arguments."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from fracture_lib import models
from fracture_lib.errors import FractureLibError, ParameterError
from fracture_lib.models import ARCHITECTURES, build_model, last_conv_layer_name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_builds_and_predicts(arch: str) -> None:
    keras.backend.clear_session()
    size = 32 if arch == "small_cnn" else models.MINIMUM_SIZE[arch]
    binary = build_model(arch, size, weights=None)
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 1)).astype(np.float32)
    probabilities = binary.predict(images, verbose=0)
    assert probabilities.shape == (2, 1) and np.all((probabilities >= 0) & (probabilities <= 1))
    # The Grad-CAM layer is a top-level layer with a spatial output.
    layer = binary.get_layer(last_conv_layer_name(binary))
    assert layer in binary.layers and len(layer.output.shape) == 4
    assert not any(isinstance(sub, keras.Model) for sub in binary.layers)


def test_softmax_classifier_sums_to_one() -> None:
    classifier = build_model("small_cnn", 48, num_classes=3)
    probabilities = classifier.predict(np.zeros((4, 48, 48, 1), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_saved_model_reloads_in_safe_mode_with_identical_predictions(tmp_path: Path) -> None:
    model = build_model("small_cnn", 48, seed=1)
    images = np.random.default_rng(1).uniform(0, 255, (3, 48, 48, 1)).astype(np.float32)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    # A whole-model weights file is accepted as `weights`.
    model.save_weights(tmp_path / "small.weights.h5")
    again = build_model("small_cnn", 48, weights=str(tmp_path / "small.weights.h5"), seed=7)
    np.testing.assert_allclose(again.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_imagenet_offline_names_the_file_to_place(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline, raising=False)
    monkeypatch.setattr("keras.src.applications.densenet.file_utils.get_file", offline, raising=False)
    with pytest.raises(FractureLibError, match=r"~/.keras/models/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        build_model("densenet121", 32, weights="imagenet")


def test_bad_arguments_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="unknown architecture 'vgg'"):
        build_model("vgg", 64)
    with pytest.raises(ParameterError, match="too small"):
        build_model("densenet121", 8)
    with pytest.raises(ParameterError, match="no ImageNet weights"):
        build_model("small_cnn", 64, weights="imagenet")
    with pytest.raises(ParameterError, match="dropout_rate"):
        build_model("small_cnn", 64, dropout_rate=1.5)
    with pytest.raises(FractureLibError, match="not found"):
        build_model("small_cnn", 64, weights=str(tmp_path / "absent.weights.h5"))
