"""Parameter files: params.yaml, the presets read on top of it, overrides, and delivery to the notebooks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fracture_lib import config, reports
from fracture_lib import parameters as parameter_files
from fracture_lib.errors import ParameterError
from fracture_lib.train import TrainConfig

PRESETS = sorted(parameter_files.PRESETS_DIR.glob("*.yaml"))


def test_committed_parameters_are_valid() -> None:
    parameters = parameter_files.load_parameters()
    assert parameters["body_parts"] == ["elbow", "hand", "shoulder"]
    assert parameters["aggregation"] == "mean"
    # params.yaml and TrainConfig agree on every training default.
    defaults = TrainConfig()
    for key, value in parameter_files.training_values(parameters).items():
        expected = getattr(defaults, key)
        assert (list(expected) if isinstance(expected, tuple) else expected) == \
            (list(value) if isinstance(value, tuple) else value), key


def test_overrides_are_read_as_yaml_and_validated() -> None:
    overrides = parameter_files.parse_overrides(["epochs=3", "body_parts=[elbow]", "weights=imagenet", "arch=densenet121"])
    assert overrides == {"epochs": 3, "body_parts": ["elbow"], "weights": "imagenet", "arch": "densenet121"}
    parameters = parameter_files.load_parameters(overrides={**overrides, "body_parts": "elbow hand"})
    assert parameters["epochs"] == 3 and parameters["body_parts"] == ["elbow", "hand"]
    with pytest.raises(ParameterError, match="KEY=VALUE"):
        parameter_files.parse_overrides(["epochs"])
    with pytest.raises(ParameterError, match="unknown parameter 'epoch'"):
        parameter_files.load_parameters(overrides={"epoch": 3})
    with pytest.raises(ParameterError, match="epochs=0"):
        parameter_files.load_parameters(overrides={"epochs": 0})
    with pytest.raises(ParameterError, match="unknown body part 'knee!'"):
        parameter_files.load_parameters(overrides={"body_parts": ["knee!"]})
    with pytest.raises(ParameterError, match="threshold_method"):
        parameter_files.load_parameters(overrides={"threshold_method": "best"})
    # Training values are checked by TrainConfig before any data is read.
    with pytest.raises(ParameterError, match="unknown architecture 'densenet196'"):
        parameter_files.load_parameters(overrides={"arch": "densenet196"})
    with pytest.raises(ParameterError, match="small_cnn has no ImageNet weights"):
        parameter_files.load_parameters(overrides={"weights": "imagenet"})
    with pytest.raises(ParameterError, match="img_size=16 is too small for densenet121"):
        parameter_files.load_parameters(overrides={"arch": "densenet121", "img_size": 16})
    with pytest.raises(ParameterError, match="learning_rate='fast' must be"):
        parameter_files.load_parameters(overrides={"learning_rate": "fast"})
    with pytest.raises(ParameterError, match="schedule='step'"):
        parameter_files.load_parameters(overrides={"schedule": "step"})


def test_bad_parameter_file_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "params.yaml"
    broken.write_text("epochs: [1,\n")
    with pytest.raises(ParameterError, match=re.escape(str(broken))):
        parameter_files.load_parameters(broken)
    with pytest.raises(ParameterError, match="not found"):
        parameter_files.load_parameters(tmp_path / "absent.yaml")
    unknown = tmp_path / "mine.yaml"
    unknown.write_text("learning_rte: 0.1\n")
    with pytest.raises(ParameterError, match=f"learning_rte in {re.escape(str(unknown))}"):
        parameter_files.load_parameters(unknown)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("patience: ten\n")
    with pytest.raises(ParameterError, match=f"patience='ten' in {re.escape(str(wrong))}"):
        parameter_files.load_parameters(wrong)


def test_presets_exist_and_load_on_top_of_params_yaml() -> None:
    names = {path.name for path in PRESETS}
    assert {"real-cpu.yaml", "mura-paper.yaml"} <= names
    defaults = parameter_files.load_parameters()
    for path in PRESETS:
        written = parameter_files.read_parameter_file(path)
        loaded = parameter_files.load_parameters(path)
        # The preset's keys win; every other key is params.yaml's.
        for key, value in loaded.items():
            expected = written.get(key, defaults[key])
            assert value == (float(expected) if isinstance(value, float) and expected is not None else expected), (path, key)
        # Options given on the command line win over the preset.
        assert parameter_files.load_parameters(path, {"learning_rate": 0.0005})["learning_rate"] == 0.0005
    paper = parameter_files.load_parameters(parameter_files.PRESETS_DIR / "mura-paper.yaml")
    assert (paper["arch"], paper["img_size"], paper["weights"], paper["learning_rate"], paper["batch_size"],
            paper["schedule"]) == ("densenet169", 320, "imagenet", 1e-4, 8, "plateau")


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_every_preset_value_reaches_its_notebooks(preset: Path) -> None:
    parameters = parameter_files.load_parameters(preset)
    jobs = reports.plan_reports(parameters)
    assert reports.undelivered_parameters(parameters, jobs) == []
    training = [job for job in jobs if job.notebook == "03_train"]
    fracture_job = next(job for job in training if job.parameters["TARGET"] == config.FRACTURE_TARGET)
    # Notebook 03 builds its TrainConfig from its named parameters and RECIPE: the preset's values.
    train_config = TrainConfig(target="fracture", body_part=fracture_job.parameters["BODY_PART"],
                               arch=fracture_job.parameters["ARCH"], img_size=fracture_job.parameters["IMG_SIZE"],
                               epochs=fracture_job.parameters["EPOCHS"], batch_size=fracture_job.parameters["BATCH_SIZE"],
                               learning_rate=fracture_job.parameters["LEARNING_RATE"],
                               weights=fracture_job.parameters["WEIGHTS"], seed=fracture_job.parameters["SEED"],
                               **fracture_job.parameters["RECIPE"])
    train_config.validate()
    for key, value in parameter_files.training_values(parameters).items():
        if key not in ("run_name", "data_dir"):
            saved = getattr(train_config, key)
            assert (list(saved) if isinstance(saved, tuple) else saved) == \
                (list(value) if isinstance(value, tuple) else value), key
    # The body-part classifier gets the same recipe, less what only fracture models take.
    router = next(job for job in training if job.parameters["TARGET"] == config.BODY_PART_TARGET)
    assert router.parameters["RECIPE"]["pool_parts"] == [] and router.parameters["RECIPE"]["loss"] == "bce"


def test_clahe_reaches_training_and_preprocessing() -> None:
    parameters = parameter_files.load_parameters(overrides={"clahe": True})
    jobs = {job.output_stem: job for job in reports.plan_reports(parameters)}
    assert jobs["02_preprocessing"].parameters["CLAHE"] is True
    assert jobs["03_train_elbow"].parameters["RECIPE"]["clahe"] is True


def test_a_parameter_no_notebook_declares_is_an_error(monkeypatch, tiny_demo_root: Path, tmp_path: Path) -> None:
    parameters = parameter_files.load_parameters(overrides={"data_dir": str(tiny_demo_root)})
    parameters["orphan"] = 1
    assert reports.undelivered_parameters(parameters, reports.plan_reports(parameters)) == ["orphan"]
    # A recipe setting dropped from RECIPE_PARAMETERS reaches no notebook either.
    monkeypatch.setattr(parameter_files, "RECIPE_PARAMETERS",
                        tuple(key for key in parameter_files.RECIPE_PARAMETERS if key != "ema_momentum"))
    del parameters["orphan"]
    assert reports.undelivered_parameters(parameters, reports.plan_reports(parameters)) == ["ema_momentum"]
    with pytest.raises(ParameterError, match="ema_momentum reach no notebook"):
        reports.run_reports(parameters, reports_dir=tmp_path / "reports", progress=lambda message: None)
    assert not (tmp_path / "reports" / "index.html").exists()
