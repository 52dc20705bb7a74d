"""Training runs: outputs, reloading, class weights, resume after interruption, atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from fracture_lib import config, mura
from fracture_lib.errors import FractureLibError, ModelNotFoundError, ParameterError
from fracture_lib.train import (
    TrainConfig, compute_class_weights, find_run, list_runs, load_run, predict_images, predict_split, train_model,
)


def test_class_weights_follow_the_mura_paper() -> None:
    weights = compute_class_weights([0, 0, 0, 1])
    assert weights == {0: 0.25, 1: 0.75}
    with pytest.raises(FractureLibError, match="only one class"):
        compute_class_weights([1, 1])


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ParameterError, match="unknown body part 'knee'"):
        TrainConfig(body_part="knee").validate()
    with pytest.raises(ParameterError, match="target"):
        TrainConfig(target="age").validate()
    with pytest.raises(ParameterError, match="epochs"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(ParameterError, match="run_name"):
        TrainConfig(run_name="../escape").validate()


def test_run_writes_every_output_and_reloads(tiny_runs: dict[str, Path]) -> None:
    run_dir = tiny_runs["elbow"]
    for name in ("model.keras", "history.csv", "config.json", "val_predictions.csv"):
        assert (run_dir / name).is_file(), name
    run_config = json.loads((run_dir / "config.json").read_text())
    for key in ("target", "body_part", "arch", "img_size", "preprocess", "last_conv_layer", "index_fingerprint",
                "versions", "class_weights", "learning_rate", "seed", "synthetic_data"):
        assert key in run_config, key
    assert run_config["synthetic_data"] is True
    weights = run_config["class_weights"]
    assert weights["0"] + weights["1"] == pytest.approx(1.0)
    history = pd.read_csv(run_dir / "history.csv")
    assert {"loss", "val_loss", "val_auroc", "learning_rate"} <= set(history.columns)
    predictions = pd.read_csv(run_dir / "val_predictions.csv")
    assert list(predictions.columns) == ["path", "study", "patient", "body_part", "label", "probability"]
    assert predictions["body_part"].eq("elbow").all() and predictions["probability"].between(0, 1).all()

    # The saved model reloads (safe mode) and predicts exactly what was saved.
    run = load_run(run_dir)
    assert run.threshold == 0.5 and run.preprocess.img_size == run_config["img_size"]
    index = mura.build_index(run_config["data_root"], seed=run_config["seed"])
    again = predict_split(run, index, run_config["data_root"], split="val")
    np.testing.assert_allclose(again["probability"], predictions["probability"], atol=1e-5)
    test = predict_split(run, index, run_config["data_root"], split="test")
    assert len(test) == ((index["split"] == "test") & (index["body_part"] == "elbow")).sum()


def test_body_part_classifier_run(tiny_runs: dict[str, Path]) -> None:
    run = load_run(tiny_runs["body_part"])
    assert run.classes == list(config.DEFAULT_BODY_PARTS)
    predictions = pd.read_csv(tiny_runs["body_part"] / "val_predictions.csv")
    assert {"label", "predicted", "prob_elbow", "prob_hand", "prob_shoulder"} <= set(predictions.columns)
    sums = predictions[["prob_elbow", "prob_hand", "prob_shoulder"]].sum(axis=1)
    np.testing.assert_allclose(sums, 1.0, atol=1e-4)
    probabilities = predict_images(run.model, np.zeros((3, run.preprocess.img_size, run.preprocess.img_size), np.uint8))
    assert probabilities.shape == (3, 3)


def test_find_and_list_runs(tiny_runs: dict[str, Path]) -> None:
    assert find_run("elbow", "tiny") == tiny_runs["elbow"]
    assert find_run("elbow").parent == tiny_runs["elbow"].parent
    with pytest.raises(ModelNotFoundError, match="no trained model for 'wrist'"):
        find_run("wrist")
    with pytest.raises(ModelNotFoundError, match="no trained run 'absent'"):
        find_run("elbow", "absent")
    runs = list_runs()
    assert {("elbow", "tiny"), ("body_part", "tiny")} <= set(zip(runs["name"], runs["run_name"]))


class _Interrupt(keras.callbacks.Callback):
    """Simulates a crash at the end of the first epoch."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption")


def test_interrupted_run_keeps_the_old_model_and_resumes(tiny_demo_root: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    settings = dict(body_part="hand", img_size=32, batch_size=16, data_dir=str(tiny_demo_root), run_name="resume",
                    seed=0, patience=5)
    good = train_model(TrainConfig(epochs=1, **settings), models_dir=models_dir, verbose=0)
    good_bytes = (good.run_dir / "model.keras").read_bytes()

    with pytest.raises(KeyboardInterrupt):
        train_model(TrainConfig(epochs=2, **settings), models_dir=models_dir, verbose=0,
                    extra_callbacks=[_Interrupt()])
    # The interrupted run did not touch the previous good run.
    assert (good.run_dir / "model.keras").read_bytes() == good_bytes
    assert (models_dir / "hand" / ".partial-resume" / "backup").is_dir()

    resumed = train_model(TrainConfig(epochs=2, **settings), models_dir=models_dir, verbose=0)
    history = pd.read_csv(resumed.run_dir / "history.csv")
    # Epoch 0 came from the interrupted attempt; the resumed one trained only epoch 1.
    assert list(history["epoch"]) == [0, 1]
    assert len(resumed.history) == 2
    assert (resumed.run_dir / "model.keras").read_bytes() != good_bytes
    assert not (models_dir / "hand" / ".partial-resume").exists()
