"""The training recipe's levers: schedule, EMA, focal loss, test-time flips, pooled parts, split seed."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from fracture_lib import datasets, recipe
from fracture_lib.errors import ParameterError
from fracture_lib.models import build_model
from fracture_lib.runs import LoadedRun, load_run
from fracture_lib.train import TrainConfig, own_part_rows, predict_images, train_model, training_index


def _tiny_config(tiny_demo_root: Path, **values) -> TrainConfig:
    """A one-epoch elbow run at 32 px on the tiny demo set."""
    settings = {"body_part": "elbow", "img_size": 32, "epochs": 1, "batch_size": 16, "seed": 0,
                "data_dir": str(tiny_demo_root), **values}
    return TrainConfig(**settings)


def test_recipe_choices_are_validated() -> None:
    for values, message in (({"optimizer": "sgd"}, "optimizer='sgd'"), ({"schedule": "step"}, "schedule='step'"),
                            ({"loss": "hinge"}, "loss='hinge'"), ({"ema_momentum": 1.0}, "ema_momentum"),
                            ({"warmup_epochs": 2}, "needs schedule=cosine"),
                            ({"schedule": "cosine", "warmup_epochs": 30}, "below epochs"),
                            ({"learning_rate": "fast"}, "learning_rate='fast' must be a number"),
                            ({"split_seed": -1}, "split_seed"), ({"tta": "yes"}, "tta"),
                            ({"translate": 0.6}, "translate"), ({"gamma": "x"}, "gamma")):
        with pytest.raises(ParameterError, match=message):
            TrainConfig(body_part="elbow", **values).validate()
    with pytest.raises(ParameterError, match="focal applies to fracture models"):
        TrainConfig(target="body_part", loss="focal").validate()
    with pytest.raises(ParameterError, match="pool_parts applies to fracture models"):
        TrainConfig(target="body_part", pool_parts=("all",)).validate()


def test_cosine_schedule_warms_up_then_decays() -> None:
    schedule = recipe.learning_rate_schedule(0.01, "cosine", epochs=10, steps_per_epoch=4, warmup_epochs=2)
    rates = np.array([float(schedule(step)) for step in range(41)])
    # Linear warm-up to the peak over the first 8 steps, then a monotone decay to 1% of the peak.
    assert rates[0] == pytest.approx(0.0) and rates[4] == pytest.approx(0.005) and rates[8] == pytest.approx(0.01)
    assert np.all(np.diff(rates[8:]) <= 1e-9) and rates[40] == pytest.approx(0.01 * recipe.COSINE_FINAL_FRACTION)
    assert recipe.learning_rate_schedule(0.01, "plateau", 10, 4) == 0.01
    # The plateau schedule brings its tenfold drop; cosine needs no callback.
    assert [type(item).__name__ for item in recipe.schedule_callbacks("plateau", 5)] == ["ReduceLROnPlateau"]
    assert recipe.schedule_callbacks("cosine", 5) == []


def test_focal_loss_down_weights_easy_images() -> None:
    labels = np.array([[1.0], [1.0]], dtype=np.float32)
    easy, hard = np.array([[0.95], [0.95]], dtype=np.float32), np.array([[0.3], [0.3]], dtype=np.float32)
    bce, focal = recipe.make_binary_loss("bce"), recipe.make_binary_loss("focal", focal_gamma=2.0)
    ratio_easy = float(focal(labels, easy)) / float(bce(labels, easy))
    ratio_hard = float(focal(labels, hard)) / float(bce(labels, hard))
    # (1 - p)^gamma: 0.0025 for the easy image, 0.49 for the hard one.
    assert ratio_easy == pytest.approx(0.05 ** 2, rel=1e-3) and ratio_hard == pytest.approx(0.7 ** 2, rel=1e-3)


def test_test_time_augmentation_averages_the_flips() -> None:
    keras.backend.clear_session()
    model = build_model("small_cnn", 32, seed=3)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
    plain = predict_images(model, images)
    mirrored = predict_images(model, np.ascontiguousarray(images[:, :, ::-1]))
    assert not np.allclose(plain, mirrored)
    np.testing.assert_allclose(predict_images(model, images, tta=True), (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)


def test_ema_weights_are_the_ones_saved(tiny_demo_root: Path, tmp_path: Path) -> None:
    # With a momentum this close to 1 the average barely moves, while the raw weights do: the saved
    # model must hold the average, which validation and early stopping used.
    keras.backend.clear_session()
    initial = build_model("small_cnn", 32, seed=0).get_layer("last_conv_conv").get_weights()[0]
    averaged = train_model(_tiny_config(tiny_demo_root, epochs=2, ema_momentum=0.999999, learning_rate=0.01,
                                        run_name="ema"), models_dir=tmp_path, verbose=0)
    raw = train_model(_tiny_config(tiny_demo_root, epochs=2, learning_rate=0.01, run_name="raw"),
                      models_dir=tmp_path, verbose=0)
    saved_averaged = load_run(averaged.run_dir).model.get_layer("last_conv_conv").get_weights()[0]
    saved_raw = load_run(raw.run_dir).model.get_layer("last_conv_conv").get_weights()[0]
    # Keras starts the average at the weights after the first step; Adam moves a weight by at most
    # about the learning rate per step, so the average stays within one step of the start.
    averaged_move, raw_move = np.abs(saved_averaged - initial).max(), np.abs(saved_raw - initial).max()
    assert averaged_move <= 0.0101 and raw_move > 3 * averaged_move
    # The validation predictions written with the run come from the saved (averaged) weights.
    frame = pd.read_csv(averaged.run_dir / "val_predictions.csv")
    run = load_run(averaged.run_dir)
    _, subset = training_index(_tiny_config(tiny_demo_root))
    from fracture_lib.cache import build_cache

    images, rows = build_cache(subset, tiny_demo_root, run.preprocess, progress=False).select("val")
    np.testing.assert_allclose(frame["probability"], predict_images(run.model, images), rtol=1e-4, atol=1e-5)
    assert json.loads((averaged.run_dir / "config.json").read_text())["ema_momentum"] == pytest.approx(0.999999)


def test_pooled_model_trains_on_every_part_and_validates_on_its_own(tiny_demo_root: Path, tmp_path: Path) -> None:
    own_config = _tiny_config(tiny_demo_root)
    pooled_config = _tiny_config(tiny_demo_root, pool_parts=("all",), run_name="pooled", tta=True,
                                 optimizer="adamw", weight_decay=1e-4, schedule="cosine", loss="focal")
    _, own = training_index(own_config)
    _, pooled = training_index(pooled_config)
    assert set(pooled.loc[pooled["split"] == "train", "body_part"]) == {"elbow", "hand", "shoulder"}
    assert set(pooled.loc[pooled["split"] != "train", "body_part"]) == {"elbow"}
    pd.testing.assert_frame_equal(own_part_rows(pooled, pooled_config), own)
    result = train_model(pooled_config, models_dir=tmp_path, verbose=0)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["images"]["train"] == int((pooled["split"] == "train").sum()) > int((own["split"] == "train").sum())
    assert saved["pool_parts"] == ["all"] and saved["tta"] is True and saved["loss"] == "focal"
    # Evaluation checks the elbow rows, which a pooled run records as its index fingerprint.
    assert saved["index_fingerprint"] == datasets.index_fingerprint(own)
    from fracture_lib import evaluation

    evaluated = evaluation.evaluate_run(result.run_dir, split="test", n_boot=20)
    assert set(evaluated.index["body_part"]) == {"elbow"} and len(evaluated.predictions) > 0


def test_split_seed_alone_draws_the_split(tiny_demo_root: Path) -> None:
    def val_patients(**values) -> set[str]:
        _, rows = training_index(_tiny_config(tiny_demo_root, **values))
        return set(rows.loc[rows["split"] == "val", "patient"])

    assert val_patients(seed=1) == val_patients(seed=2)
    assert val_patients(split_seed=1) != val_patients(split_seed=2)


def test_train_command_reads_a_preset_then_set_then_named_options(tiny_demo_root: Path, tmp_path: Path, capsys) -> None:
    from fracture_lib import cli

    preset = tmp_path / "mine.yaml"
    preset.write_text("img_size: 48\noptimizer: adamw\nweight_decay: 0.001\nepochs: 5\nbatch_size: 16\n")
    models_dir = tmp_path / "models"
    code = cli.main(["train", "--part", "elbow", "--data", str(tiny_demo_root), "--params", str(preset),
                     "--set", "tta=true", "--set", "img_size=40", "--img-size", "32", "--epochs", "1",
                     "--run-name", "preset", "--models-dir", str(models_dir), "--verbose", "0"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((models_dir / "elbow" / "preset" / "config.json").read_text())
    # The named option beats --set, which beats the preset, which beats params.yaml.
    assert (saved["img_size"], saved["epochs"], saved["optimizer"], saved["weight_decay"], saved["tta"]) == \
        (32, 1, "adamw", 0.001, True)
    assert saved["learning_rate"] == 0.003 and saved["schedule"] == "plateau"
    capsys.readouterr()
    # Bad values fail in one line before any data is read.
    for arguments, message in ((["--set", "learning_rate=fast"], "learning_rate='fast' must be"),
                               (["--arch", "densenet196"], "unknown architecture 'densenet196'"),
                               (["--params", str(tmp_path / "absent.yaml")], "not found")):
        assert cli.main(["train", "--part", "elbow", "--data", str(tmp_path / "no-data"), *arguments]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and error.count("\n") == 1, error


def test_predict_scores_a_tta_run_over_both_flips(tmp_path: Path) -> None:
    from fracture_lib.predict import ScoringModel
    from fracture_lib.preprocess import PreprocessSettings

    keras.backend.clear_session()
    model = build_model("small_cnn", 32, seed=5)
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8)

    def scorer(tta: bool) -> ScoringModel:
        run = LoadedRun(model=model, config={"tta": tta}, run_dir=tmp_path, preprocess=PreprocessSettings(img_size=32),
                        threshold=0.5, classes=[0, 1], name="elbow")
        return ScoringModel(run)

    np.testing.assert_allclose(scorer(True).scores(images), predict_images(model, images, tta=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scorer(False).scores(images), predict_images(model, images), rtol=1e-5, atol=1e-6)
