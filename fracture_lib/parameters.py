"""Parameter files: ``params.yaml`` (the demo's fast defaults), the presets in ``params/``, overrides.

``params.yaml`` defines every parameter of ``make reports`` and ``train``. A preset
(``params/real-cpu.yaml``, ``params/mura-paper.yaml`` or a file of your own) holds only the keys
it changes and is read on top of ``params.yaml``; options given on the command line
(``--set KEY=VALUE`` and the named options such as ``--epochs``) come last. Every value is
checked here, once, before any data is read: types first, then the training values by
``train.TrainConfig.validate`` (their one home), so a typo fails in a second, not after caching.

The training recipe's settings beyond the named ones (``RECIPE_PARAMETERS``) reach notebook 03
as one ``RECIPE`` dictionary; ``reports`` refuses a parameter that would reach no notebook.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from fracture_lib import config
from fracture_lib.errors import ParameterError
from fracture_lib.files import native_stderr_to
from fracture_lib.metrics import AGGREGATIONS, THRESHOLD_METHODS

NUMBER = (float, int)

# Parameters params.yaml must define, with the type each must have.
PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "data_dir": (str, type(None)),
    "body_parts": (list,),
    "seed": (int,),
    "split_seed": (int,),
    "demo_patients": (int, type(None)),
    "demo_difficulty": (*NUMBER, type(None)),
    "arch": (str,),
    "weights": (str, type(None)),
    "img_size": (int,),
    "clahe": (bool,),
    "epochs": (int,),
    "batch_size": (int,),
    "learning_rate": NUMBER,
    "optimizer": (str,),
    "weight_decay": NUMBER,
    "schedule": (str,),
    "warmup_epochs": (int,),
    "patience": (int,),
    "ema_momentum": NUMBER,
    "loss": (str,),
    "focal_gamma": NUMBER,
    "dropout_rate": (*NUMBER, type(None)),
    "flip": (bool,),
    "rotation_degrees": NUMBER,
    "zoom": NUMBER,
    "translate": NUMBER,
    "brightness": NUMBER,
    "contrast": NUMBER,
    "gamma": NUMBER,
    "pool_parts": (list,),
    "tta": (bool,),
    "precision": (str,),
    "jit_compile": (bool,),
    "augment_on": (str,),
    "lr_scaling": (str,),
    "box_loss_weight": NUMBER,
    "head": (str,),
    "train_crop": (int,),
    "run_name": (str,),
    "aggregation": (str,),
    "threshold_method": (str,),
    "n_bootstrap": (int,),
}

# Training settings notebook 03 receives together as its RECIPE dictionary (the others are named).
RECIPE_PARAMETERS = ("split_seed", "clahe", "optimizer", "weight_decay", "schedule", "warmup_epochs", "patience",
                     "ema_momentum", "loss", "focal_gamma", "dropout_rate", "flip", "rotation_degrees", "zoom",
                     "translate", "brightness", "contrast", "gamma", "pool_parts", "tta", "precision", "jit_compile",
                     "augment_on", "lr_scaling", "box_loss_weight", "head", "train_crop")
# Parameters that become TrainConfig values of the same name.
TRAINING_PARAMETERS = ("arch", "weights", "img_size", "epochs", "batch_size", "learning_rate", "seed", "run_name",
                       *RECIPE_PARAMETERS)
# Parameters the report runner itself uses (no notebook declares them).
RUNNER_PARAMETERS = ("demo_patients", "demo_difficulty")
PRESETS_DIR = config.PROJECT_ROOT / "params"


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["epochs=5", "body_parts=[elbow, hand]"]`` into a dictionary (values read as YAML)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ParameterError(f"bad override {item!r}: write KEY=VALUE, e.g. --set epochs=5")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return overrides


def read_parameter_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one parameter file as a dictionary; a missing or malformed file is a ``ParameterError``."""
    path = config.resolve_path(path)
    if not path.is_file():
        hint = "restore it with `git checkout params.yaml`" if path == config.PARAMS_FILE else \
            f"check the path (presets: {', '.join(sorted(item.name for item in PRESETS_DIR.glob('*.yaml')))})"
        raise ParameterError(f"parameter file {path} not found: {hint}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        first_line = str(error).splitlines()[0]
        raise ParameterError(f"parameter file {path} is not valid YAML ({first_line}): fix its syntax") from None
    if not isinstance(values, dict):
        raise ParameterError(f"parameter file {path} must hold KEY: value lines")
    unknown = [key for key in values if key not in PARAMETER_TYPES]
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(map(str, unknown))} in {path}: "
                             f"choose from {', '.join(PARAMETER_TYPES)}")
    return values


def load_parameters(params_file: str | os.PathLike[str] | None = None,
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read ``params.yaml``, then ``params_file`` on top of it (a preset), apply ``overrides``, validate.

    ``params_file=None`` (or ``params.yaml`` itself) reads ``params.yaml`` alone, which must
    define every parameter.
    """
    defaults_path = config.PARAMS_FILE
    parameters = read_parameter_file(defaults_path)
    validate_parameters(parameters, source=defaults_path)
    source = defaults_path
    if params_file is not None and config.resolve_path(params_file) != defaults_path.resolve():
        source = config.resolve_path(params_file)
        parameters.update(read_parameter_file(source))
        parameters = validate_parameters(parameters, source=source)
    else:
        parameters = validate_parameters(parameters, source=source)
    if not overrides:
        return parameters
    for key, value in overrides.items():
        if key not in PARAMETER_TYPES:
            raise ParameterError(f"unknown parameter {key!r}: choose from {', '.join(PARAMETER_TYPES)}")
        parameters[key] = value
    # A bad value now comes from the command line, not from the file: say so.
    return validate_parameters(parameters)


def _check_types(parameters: dict[str, Any], where: str) -> dict[str, Any]:
    """Check each value's type; return a copy with numbers as floats and lists of parts normalised."""
    normalised = dict(parameters)
    for key in ("body_parts", "pool_parts"):
        if isinstance(normalised.get(key), str):
            normalised[key] = list(config.parse_body_parts(normalised[key]))
    for key, allowed in PARAMETER_TYPES.items():
        value = normalised[key]
        # YAML reads "yes"/"no" as booleans, which are ints too: keep the check strict.
        if isinstance(value, bool) and bool not in allowed:
            raise ParameterError(f"parameter {key}={value!r}{where} has the wrong type")
        if not isinstance(value, allowed):
            names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
            raise ParameterError(f"parameter {key}={value!r}{where} must be {names}")
        if allowed == NUMBER or (float in allowed and value is not None):
            normalised[key] = float(value)
    normalised["body_parts"] = list(config.parse_body_parts(normalised["body_parts"]))
    normalised["pool_parts"] = list(config.parse_body_parts(normalised["pool_parts"])) if normalised["pool_parts"] else []
    if normalised["weights"] in ("None", "none", "null", ""):
        normalised["weights"] = None
    return normalised


def validate_parameters(parameters: dict[str, Any], source: Path | None = None) -> dict[str, Any]:
    """Check names, types and values of the parameters; return a normalised copy."""
    where = f" in {source}" if source else ""
    missing = [key for key in PARAMETER_TYPES if key not in parameters]
    if missing:
        raise ParameterError(f"missing parameter(s) {', '.join(missing)}{where}: add them (see params.yaml)")
    unknown = [key for key in parameters if key not in PARAMETER_TYPES]
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}{where}: choose from {', '.join(PARAMETER_TYPES)}")
    normalised = _check_types(parameters, where)
    if normalised["n_bootstrap"] < 1:
        raise ParameterError(f"parameter n_bootstrap={normalised['n_bootstrap']}{where} must be at least 1")
    if normalised["aggregation"] not in AGGREGATIONS:
        raise ParameterError(f"parameter aggregation={normalised['aggregation']!r}{where}: choose mean or max")
    if normalised["threshold_method"] not in THRESHOLD_METHODS:
        raise ParameterError(
            f"parameter threshold_method={normalised['threshold_method']!r}{where}: choose fixed or youden")
    _check_training_values(normalised, where)
    return normalised


def _check_training_values(parameters: dict[str, Any], where: str) -> None:
    """Validate the training values as ``TrainConfig`` does, for the first body part."""
    if "tensorflow" in sys.modules:
        from fracture_lib import train
    else:
        # TensorFlow's C++ start-up notices would land between the command's own lines.
        with native_stderr_to(os.devnull):
            from fracture_lib import train
    try:
        train.TrainConfig(body_part=parameters["body_parts"][0] if parameters["body_parts"] else None,
                          **training_values(parameters)).validate()
    except ParameterError as error:
        raise ParameterError(f"{error} ({where.strip()})" if where else str(error)) from None


def training_values(parameters: dict[str, Any]) -> dict[str, Any]:
    """The ``TrainConfig`` keyword values the parameters set (``data_dir`` included)."""
    values = {key: parameters[key] for key in TRAINING_PARAMETERS if key in parameters}
    if "pool_parts" in values:
        values["pool_parts"] = tuple(values["pool_parts"])
    if parameters.get("data_dir") is not None:
        values["data_dir"] = parameters["data_dir"]
    return values


def recipe(parameters: dict[str, Any]) -> dict[str, Any]:
    """The ``RECIPE`` dictionary notebook 03 receives."""
    return {key: parameters[key] for key in RECIPE_PARAMETERS}
