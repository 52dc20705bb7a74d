"""Training runs: outputs, reloading, class weights, resume after interruption, atomic replacement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from fracture_lib import config, datasets
from fracture_lib.models import build_model
from fracture_lib.errors import FractureLibError, ModelNotFoundError, ParameterError
from fracture_lib.runs import find_run, list_runs, load_run
from fracture_lib.train import (
    StopWhenPerfect, TrainConfig, compute_class_weights, dataset_summary, predict_images, predict_split,
    train_model,
)


def test_class_weights_follow_the_mura_paper() -> None:
    weights = compute_class_weights([0, 0, 0, 1])
    assert weights == {0: 0.25, 1: 0.75}
    with pytest.raises(FractureLibError, match="only one class"):
        compute_class_weights([1, 1])


def test_training_stops_once_validation_is_perfect() -> None:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.stop_training = False
    callback = StopWhenPerfect("val_accuracy")
    callback.set_model(model)
    callback.on_epoch_end(0, {"val_accuracy": 0.99, "accuracy": 1.0})
    assert model.stop_training is False
    callback.on_epoch_end(1, {"val_accuracy": 1.0})
    assert model.stop_training is True


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ParameterError, match="unknown body part 'knee!'"):
        TrainConfig(body_part="knee!").validate()
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
    index = datasets.build_index(run_config["data_root"], seed=run_config["split_seed"])
    again = predict_split(run, index, run_config["data_root"], split="val")
    np.testing.assert_allclose(again["probability"], predictions["probability"], atol=1e-5)
    test = predict_split(run, index, run_config["data_root"], split="test")
    assert len(test) == ((index["split"] == "test") & (index["body_part"] == "elbow")).sum()


def test_dataset_summary_matches_the_run(tiny_runs: dict[str, Path], tiny_demo_root: Path) -> None:
    run_config = json.loads((tiny_runs["elbow"] / "config.json").read_text())
    counts, weights = dataset_summary(TrainConfig(body_part="elbow", data_dir=str(tiny_demo_root), seed=0, split_seed=0))
    assert list(counts.columns) == ["normal", "abnormal", "total"] and list(counts.index) == ["train", "val", "test"]
    assert counts["total"].to_dict() == run_config["images"]
    assert weights == {"normal": run_config["class_weights"]["0"], "abnormal": run_config["class_weights"]["1"]}
    # The paper's weights: each class is weighted by the other's share of the training split.
    assert weights["abnormal"] == pytest.approx(counts.loc["train", "normal"] / counts.loc["train", "total"])
    counts, weights = dataset_summary(TrainConfig(target="body_part", data_dir=str(tiny_demo_root), seed=0))
    assert list(counts.columns) == ["elbow", "hand", "shoulder", "total"] and set(weights) == {"elbow", "hand", "shoulder"}


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
    with pytest.raises(ModelNotFoundError, match=r"no trained model for 'elbow' with run name 'absent' \(runs there: [^)]*\btiny\b"):
        find_run("elbow", "absent")
    runs = list_runs()
    assert {("elbow", "tiny"), ("body_part", "tiny")} <= set(zip(runs["name"], runs["run"]))


def test_empty_and_broken_runs_are_reported(tmp_path: Path) -> None:
    empty = list_runs(tmp_path)
    assert empty.empty and "best_val_auroc" in empty.columns
    broken = tmp_path / "elbow" / "broken"
    broken.mkdir(parents=True)
    (broken / "model.keras").write_bytes(b"not a zip file")
    (broken / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=r"cannot load .*broken/model\.keras .*train the run again"):
        load_run(broken)
    with pytest.raises(ModelNotFoundError, match="is not a complete run"):
        load_run(tmp_path / "elbow" / "absent")


class _Interrupt(keras.callbacks.Callback):
    """Simulates a crash at the end of the first epoch."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption")


class _Diverge(keras.callbacks.Callback):
    """Simulates a resumed epoch that diverges: every weight becomes NaN (validation AUROC 0)."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.set_weights([np.full_like(weights, np.nan) for weights in self.model.get_weights()])


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
    work_dir = models_dir / "hand" / ".partial-resume"
    assert (work_dir / "backup").is_dir()
    interrupted_best = tmp_path / "interrupted-best.weights.h5"
    shutil.copy(work_dir / "best.weights.h5", interrupted_best)
    # Other settings do not resume the interrupted attempt: refused in one line, the attempt kept.
    with pytest.raises(ParameterError, match=r"\.partial-resume holds an interrupted run with other settings "
                                             r"\(img_size 32 -> 48\): pass --restart"):
        train_model(TrainConfig(epochs=2, **{**settings, "img_size": 48}), models_dir=models_dir, verbose=0)
    with pytest.raises(ParameterError, match="split_seed 42 -> 7"):
        train_model(TrainConfig(epochs=2, **{**settings, "split_seed": 7}), models_dir=models_dir, verbose=0)
    assert (work_dir / "backup").is_dir() and (work_dir / "resume.json").is_file()

    resumed = train_model(TrainConfig(epochs=2, **settings), models_dir=models_dir, verbose=0,
                          extra_callbacks=[_Diverge()])
    history = pd.read_csv(resumed.run_dir / "history.csv")
    # Epoch 0 came from the interrupted attempt; the resumed one trained only epoch 1.
    assert list(history["epoch"]) == [0, 1]
    assert len(resumed.history) == 2
    assert not work_dir.exists()
    # The diverged epoch 1 is worse than epoch 0, so the published model holds epoch 0's weights,
    # although the resumed fit itself never saw epoch 0.
    assert history.loc[1, "val_auroc"] == 0.0 < history.loc[0, "val_auroc"]
    assert resumed.config["best_epoch"] == 0 and resumed.best_metrics["epoch"] == 0
    published = load_run(resumed.run_dir).model
    expected = build_model("small_cnn", 32, seed=0)
    expected.load_weights(interrupted_best)
    for saved, wanted in zip(published.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(saved, wanted)
    assert (resumed.run_dir / "model.keras").read_bytes() != good_bytes
    assert not (resumed.run_dir / "resume.json").exists()


def test_restart_discards_an_interrupted_attempt(tiny_demo_root: Path, tmp_path: Path, capsys) -> None:
    from fracture_lib import cli

    models_dir = tmp_path / "models"
    settings = dict(body_part="hand", img_size=32, batch_size=16, data_dir=str(tiny_demo_root), run_name="again", seed=0)
    with pytest.raises(KeyboardInterrupt):
        train_model(TrainConfig(epochs=2, **settings), models_dir=models_dir, verbose=0, extra_callbacks=[_Interrupt()])
    work_dir = models_dir / "hand" / ".partial-again"
    # An attempt without resume.json (an older version's) has unknown settings: refused too.
    (work_dir / "resume.json").unlink()
    common = ["train", "--part", "hand", "--data", str(tiny_demo_root), "--img-size", "32", "--batch-size", "16",
              "--epochs", "1", "--run-name", "again", "--seed", "0", "--models-dir", str(models_dir), "--verbose", "0"]
    assert cli.main(common) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "settings are unknown" in err and "--restart" in err and "Traceback" not in err
    assert cli.main([*common, "--restart"]) == 0
    history = pd.read_csv(models_dir / "hand" / "again" / "history.csv")
    assert list(history["epoch"]) == [0] and not work_dir.exists()


def test_command_line_trains_and_reports(tiny_demo_root: Path, tmp_path: Path, capsys) -> None:
    from fracture_lib import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--target", "--part", "--data", "--arch", "--img-size", "--epochs", "--run-name", "--weights"):
        assert option in help_text, option

    models_dir = tmp_path / "cli-models"
    code = cli.main(["train", "--target", "body_part", "--data", str(tiny_demo_root), "--img-size", "32",
                     "--epochs", "1", "--batch-size", "16", "--run-name", "cli", "--seed", "0",
                     "--models-dir", str(models_dir), "--verbose", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"saved {models_dir / 'body_part' / 'cli'}" in out and "best val_accuracy" in out
    assert (models_dir / "body_part" / "cli" / "model.keras").is_file()

    # A user error is one line on stderr and exit code 2, no traceback.
    assert cli.main(["train", "--part", "knee", "--data", str(tiny_demo_root), "--models-dir", str(models_dir)]) == 2
    error = capsys.readouterr().err
    # Any name is a body part; one the data lack is refused with the parts they hold.
    assert error.startswith("error: no images of knee in ") and "(present: elbow, hand, shoulder)" in error
    assert error.count("\n") == 1
