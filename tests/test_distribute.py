"""Accelerator settings: the learning-rate rule, the precision policy, mixed-precision runs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from fracture_lib import datasets, distribute
from fracture_lib.errors import ParameterError
from fracture_lib.explain import gradcam
from fracture_lib.models import build_model
from fracture_lib.runs import load_run
from fracture_lib.train import TrainConfig, predict_split, train_model


def test_learning_rate_scales_linearly_with_the_replicas() -> None:
    # Goyal et al.: learning_rate is one replica's; k replicas' global batch takes k times it.
    assert distribute.scaled_learning_rate(1e-4, 1, "linear") == pytest.approx(1e-4)
    assert distribute.scaled_learning_rate(1e-4, 8, "linear") == pytest.approx(8e-4)
    assert distribute.scaled_learning_rate(1e-4, 8, "none") == pytest.approx(1e-4)
    with pytest.raises(ParameterError, match="lr_scaling='sqrt' is unknown: choose linear or none"):
        distribute.scaled_learning_rate(1e-4, 2, "sqrt")
    with pytest.raises(ParameterError, match="replicas=0"):
        distribute.scaled_learning_rate(1e-4, 0)


@pytest.mark.parametrize(("values", "message"), [
    ({"precision": "float16"}, "precision='float16' is unknown: choose float32, mixed_float16, mixed_bfloat16"),
    ({"jit_compile": "yes"}, "jit_compile='yes' must be true or false"),
    ({"augment_on": "gpu"}, "augment_on='gpu' is unknown: choose cpu or device"),
    ({"lr_scaling": "sqrt"}, "lr_scaling='sqrt' is unknown: choose linear or none"),
])
def test_bad_accelerator_settings_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        TrainConfig(**values).validate()


def test_command_line_options_reach_the_run(monkeypatch, capsys) -> None:
    from fracture_lib import cli, train

    seen: list[dict] = []

    def stop_before_training(train_config: TrainConfig, **kwargs) -> None:
        train_config.validate()
        seen.append(train_config.to_dict())
        raise ParameterError("stopped before training")

    monkeypatch.setattr(train, "train_model", stop_before_training)
    assert cli.main(["train", "--part", "elbow"]) == 2
    assert cli.main(["train", "--part", "elbow", "--precision", "mixed_bfloat16", "--jit-compile", "--augment-on",
                     "device", "--lr-scaling", "none"]) == 2
    settings = [tuple(values[key] for key in ("precision", "jit_compile", "augment_on", "lr_scaling")) for values in seen]
    # params.yaml's defaults, then the options.
    assert settings == [("float32", False, "cpu", "linear"), ("mixed_bfloat16", True, "device", "none")]
    assert cli.main(["train", "--part", "elbow", "--augment-on", "gpu"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[-1] == "error: augment_on='gpu' is unknown: choose cpu or device"


def test_precision_policy_applies_to_the_models_built_inside_only(monkeypatch) -> None:
    before = build_model("small_cnn", 32, seed=1)
    monkeypatch.setattr(distribute, "_cpu_precision_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with distribute.precision_policy("mixed_float16"):
            mixed = build_model("small_cnn", 32, seed=1)
        with distribute.precision_policy("mixed_bfloat16"):
            pass
    # Without a GPU the user is told once that mixed precision is slow on a CPU.
    slow = [warning for warning in caught if "slow on a CPU" in str(warning.message)]
    assert len(slow) == (0 if tf.config.list_physical_devices("GPU") else 1)
    # Float16 computation with float32 weights, but the output layer (and so the probabilities) in float32.
    assert mixed.get_layer("stem_conv").compute_dtype == "float16"
    assert mixed.get_layer("stem_conv").kernel.dtype == "float32"
    assert mixed.get_layer("fracture_probability").compute_dtype == "float32"
    assert keras.ops.convert_to_numpy(mixed(np.zeros((2, 32, 32, 1), np.float32))).dtype == np.float32

    # The previous policy is back, also after an error inside: later models are float32 and exactly as before.
    with pytest.raises(RuntimeError), distribute.precision_policy("mixed_bfloat16"):
        raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == "float32"
    after = build_model("small_cnn", 32, seed=1)
    assert {layer.compute_dtype for layer in after.layers if layer.weights} == {"float32"}
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype(np.float32)
    for old, new in zip(before.get_weights(), after.get_weights()):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(before.predict(images, verbose=0), after.predict(images, verbose=0))
    with pytest.raises(ParameterError, match="precision='half' is unknown"):
        with distribute.precision_policy("half"):
            pass


class _OptimizerSpy(keras.callbacks.Callback):
    """Records the optimizer and XLA setting of the model ``fit`` trains."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.optimizer_class = type(self.model.optimizer).__name__
        self.jit_compile = self.model.jit_compile


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_run_trains_saves_and_reloads(precision: str, tiny_demo_root: Path, tmp_path: Path) -> None:
    spy = _OptimizerSpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = train_model(TrainConfig(body_part="elbow", img_size=32, epochs=1, batch_size=16, seed=0, split_seed=0,
                                         data_dir=str(tiny_demo_root), run_name=precision, precision=precision),
                             models_dir=tmp_path / "models", verbose=0, extra_callbacks=[spy])
    # Keras scales the float16 loss (a float16 gradient underflows); bfloat16 has float32's range and needs none.
    assert spy.optimizer_class == ("LossScaleOptimizer" if precision == "mixed_float16" else "Adam")
    assert spy.jit_compile is False
    assert np.isfinite(result.history["loss"]).all()
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["precision"] == precision and saved["effective_learning_rate"] == pytest.approx(saved["learning_rate"])
    assert keras.config.dtype_policy().name == "float32"

    # The reloaded model keeps the policy; its probabilities are float32 and those saved at training.
    run = load_run(result.run_dir)
    assert run.model.get_layer("last_conv_conv").dtype_policy.name == precision
    assert run.model.output.dtype == "float32"
    predictions = pd.read_csv(result.run_dir / "val_predictions.csv")
    index = datasets.build_index(tiny_demo_root, seed=0)
    again = predict_split(run, index, tiny_demo_root, split="val", cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(again["probability"], predictions["probability"], atol=1e-5)
    assert again["probability"].between(0, 1).all()
    # Grad-CAM runs through the mixed layers.
    heatmap = gradcam(run.model, np.full((32, 32), 128, dtype=np.uint8))
    assert heatmap.shape == (32, 32) and heatmap.dtype == np.float32 and np.isfinite(heatmap).all()
