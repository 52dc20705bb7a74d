"""Every architecture builds, runs a batch, exposes its Grad-CAM layer and reports bad arguments."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from fracture_lib import models
from fracture_lib.errors import FractureLibError, ParameterError
from fracture_lib.models import ARCHITECTURES, build_model, last_conv_layer_name

# The layer each backbone's Grad-CAM should use (the last 4-D output before global pooling).
EXPECTED_LAST_CONV = {
    "small_cnn": "last_conv",
    "small_cnn_patch4": "last_conv",
    "resnet_small": "last_conv",
    "densenet169": "relu",
    "densenet121": "relu",
    "resnet50": "conv5_block3_out",
    "efficientnetb0": "top_activation",
    "mobilenetv2": "out_relu",
}


def _random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Raw grey images in 0..255, as the input pipeline yields them."""
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 1)).astype(np.float32)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_builds_and_predicts(arch: str) -> None:
    keras.backend.clear_session()
    size = models.MINIMUM_SIZE[arch] if arch != "small_cnn" else 32
    model = build_model(arch, size, weights=None)
    assert model.input.shape == (None, size, size, 1) and model.inputs[0].name == "image"
    # Calling the model directly (no tf.function tracing) keeps the big backbones fast to test.
    probabilities = keras.ops.convert_to_numpy(model(_random_images(2, size), training=False))
    assert probabilities.shape == (2, 1)
    assert np.all(np.isfinite(probabilities)) and np.all((probabilities >= 0) & (probabilities <= 1))
    assert model.output.name.startswith("fracture_probability") or model.layers[-1].name == "fracture_probability"
    # The Grad-CAM layer is a top-level layer of one flat graph, with a spatial output.
    name = last_conv_layer_name(model)
    assert name == EXPECTED_LAST_CONV[arch]
    layer = model.get_layer(name)
    assert layer in model.layers and len(layer.output.shape) == 4
    assert not any(isinstance(sub, keras.Model) for sub in model.layers)
    # The compact nets' max-pooled detectors train without dropout; the backbones use 0.3.
    compact = arch in models.COMPACT_ARCHITECTURES
    assert model.get_layer("dropout").rate == (0.0 if compact else 0.3)
    # Only colour backbones repeat grey to three channels.
    assert ("grey_to_rgb" in [item.name for item in model.layers]) == (not compact)
    # Trained from random weights, every batch norm forgets its starting statistics within tens of
    # steps (Keras' backbones come with 0.99, MobileNetV2 with 0.999).
    norms = [item for item in model.layers if isinstance(item, keras.layers.BatchNormalization)]
    assert norms and {item.momentum for item in norms} == {models.FROM_SCRATCH_BATCH_NORM_MOMENTUM}


@pytest.mark.parametrize("num_classes", [2, 3])
def test_softmax_classifier_sums_to_one(num_classes: int) -> None:
    classifier = build_model("small_cnn", 48, num_classes=num_classes)
    probabilities = keras.ops.convert_to_numpy(classifier(_random_images(4, 48), training=False))
    assert probabilities.shape == (4, num_classes) and classifier.layers[-1].name == "body_part_probabilities"
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_backbone_normalisation_matches_keras_preprocess_input() -> None:
    grey = _random_images(2, 32, seed=3)
    rgb = np.repeat(grey, 3, axis=-1)
    cases = {
        "densenet121": keras.applications.densenet.preprocess_input,
        "resnet50": keras.applications.resnet50.preprocess_input,
        "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
    }
    for arch, preprocess_input in cases.items():
        # The grey-to-colour and normalisation layers build_model puts in front of the backbone.
        images = keras.Input(shape=(32, 32, 1))
        normalise = models._backbone_builders()[arch][1]
        normaliser = keras.Model(images, normalise(models._grey_to_rgb(images)))
        ours = keras.ops.convert_to_numpy(normaliser(grey))
        np.testing.assert_allclose(ours, preprocess_input(rgb.copy()), rtol=1e-5, atol=1e-4)


def test_saved_model_reloads_in_safe_mode_with_identical_predictions(tmp_path: Path) -> None:
    model = build_model("small_cnn", 48, seed=1)
    images = _random_images(3, 48, seed=1)
    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-6)
    assert last_conv_layer_name(reloaded) == "last_conv"
    # A whole-model weights file is accepted as `weights`; another seed alone would predict differently.
    model.save_weights(tmp_path / "small.weights.h5")
    again = build_model("small_cnn", 48, weights=str(tmp_path / "small.weights.h5"), seed=7)
    np.testing.assert_allclose(again.predict(images, verbose=0), expected, atol=1e-6)
    # Weights of another model shape, or a corrupt file, give one clear line naming the file.
    with pytest.raises(FractureLibError, match=r"cannot load weights from .*small\.weights\.h5.*3 output"):
        build_model("small_cnn", 48, weights=str(tmp_path / "small.weights.h5"), num_classes=3)
    (tmp_path / "corrupt.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(FractureLibError, match=r"cannot load weights from .*corrupt\.weights\.h5"):
        build_model("small_cnn", 48, weights=str(tmp_path / "corrupt.weights.h5"))


def test_imagenet_offline_names_the_file_to_place(monkeypatch, tmp_path: Path) -> None:
    keras.backend.clear_session()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    requested = []

    def offline(file_name, *args, **kwargs):
        requested.append(file_name)
        raise OSError("network is unreachable")

    # Keras applications call file_utils.get_file; patch every route so no download is tried.
    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    # MobileNetV2 builds quickly, and its file name depends on the input size (96 px here).
    file_name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    with pytest.raises(FractureLibError, match=r"~/\.keras/models/" + file_name) as caught:
        build_model("mobilenetv2", 96, weights="imagenet")
    assert "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + file_name in str(caught.value)
    assert "\n" not in str(caught.value)
    # The message names the very file Keras tried to download.
    assert requested == [file_name]


def test_imagenet_weights_file_names() -> None:
    assert models.imagenet_weights_file("resnet50", 224) == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert models.imagenet_weights_file("efficientnetb0", 128) == "efficientnetb0_notop.h5"
    # MobileNetV2's weights depend on the input size; other sizes use the 224 px file.
    assert models.imagenet_weights_file("mobilenetv2", 128).endswith("_1.0_128_no_top.h5")
    assert models.imagenet_weights_file("mobilenetv2", 320).endswith("_1.0_224_no_top.h5")


def test_bad_arguments_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="unknown architecture 'vgg'"):
        build_model("vgg", 64)
    with pytest.raises(ParameterError, match="too small"):
        build_model("densenet121", 16)
    with pytest.raises(ParameterError, match="too small"):
        build_model("small_cnn", 64.5)
    with pytest.raises(ParameterError, match="small_cnn has no ImageNet weights"):
        build_model("small_cnn", 64, weights="imagenet")
    with pytest.raises(ParameterError, match="dropout_rate"):
        build_model("small_cnn", 64, dropout_rate=1.5)
    with pytest.raises(ParameterError, match="num_classes"):
        build_model("small_cnn", 64, num_classes=0)
    missing = tmp_path / "absent.weights.h5"
    with pytest.raises(FractureLibError, match="absent.weights.h5 not found"):
        build_model("small_cnn", 64, weights=str(missing))
    backbone_file = tmp_path / "notop.h5"
    backbone_file.write_bytes(b"")
    with pytest.raises(ParameterError, match="small_cnn has no backbone"):
        build_model("small_cnn", 64, weights=str(backbone_file))
    # Parameters from notebooks arrive as strings: "none" means no weights.
    assert build_model("small_cnn", 32, weights="none").count_params() > 0


def test_seed_alone_fixes_the_initial_weights() -> None:
    first = build_model("small_cnn", 32, seed=3).get_weights()
    again = build_model("small_cnn", 32, seed=3).get_weights()
    other = build_model("small_cnn", 32, seed=4).get_weights()
    for left, right in zip(first, again):
        np.testing.assert_array_equal(left, right)
    assert any(not np.array_equal(left, right) for left, right in zip(first, other))
    # Every convolution starts from its own random numbers: no kernel repeats another's, scaled.
    kernels = [weights.ravel()[:144] for weights in first if weights.ndim == 4]
    correlations = np.corrcoef(np.stack(kernels))
    assert np.abs(correlations[np.triu_indices(len(kernels), k=1)]).max() < 0.5


def test_patch_stem_sees_every_pixel_at_the_cost_of_half_the_side() -> None:
    keras.backend.clear_session()
    patch = build_model("small_cnn_patch4", 128, seed=1)
    plain = build_model("small_cnn", 64, seed=1)
    stem = patch.get_layer("stem_conv")
    assert stem.kernel_size == (4, 4) and stem.strides == (4, 4) and stem.filters == 24
    # A film at twice the side reaches the blocks, and Grad-CAM's layer, at small_cnn's grid.
    assert patch.get_layer("block1").output.shape[1:3] == plain.get_layer("block1").output.shape[1:3] == (32, 32)
    assert patch.get_layer("last_conv").output.shape[1:3] == plain.get_layer("last_conv").output.shape[1:3]
    # One changed pixel in any corner of a 4 x 4 patch changes the stem's output there.
    images = _random_images(1, 128, seed=2)
    stem_model = keras.Model(patch.input, patch.get_layer("stem_conv").output)
    base = keras.ops.convert_to_numpy(stem_model(images))
    for row, column in ((0, 0), (3, 3), (0, 3), (3, 0)):
        changed = images.copy()
        changed[0, row, column, 0] += 50.0
        difference = np.abs(keras.ops.convert_to_numpy(stem_model(changed)) - base)
        assert difference[0, 0, 0].max() > 0 and difference[0, 1:, :].max() == 0 and difference[0, :, 1:].max() == 0
    with pytest.raises(ParameterError, match="too small for small_cnn_patch4"):
        build_model("small_cnn_patch4", 16)
