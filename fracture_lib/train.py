"""Training a fracture model per body part (or the body-part classifier), and the run folders.

A run lives in ``models/<name>/<run_name>/`` where ``<name>`` is the body part for a fracture
model and ``body_part`` for the classifier. It holds ``model.keras``, ``history.csv``,
``config.json`` (every parameter, library versions, the index fingerprint, the preprocessing
settings) and ``val_predictions.csv``. The run is assembled in a hidden sibling folder and
renamed into place only when training has finished, so a failed run never replaces a good one;
``BackupAndRestore`` keeps its state there so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
import pandas as pd

from fracture_lib import config, mura, synthetic
from fracture_lib.errors import FractureLibError, ModelNotFoundError, ParameterError
from fracture_lib.pipeline import AugmentSettings, make_dataset
from fracture_lib.preprocess import ImageCache, PreprocessSettings, build_cache

RUN_FILES = ("model.keras", "history.csv", "config.json", "val_predictions.csv")
EVALUATION_FILENAME = "evaluation.json"
DEFAULT_THRESHOLD = 0.5


@dataclass
class TrainConfig:
    """Every parameter of one training run (saved to ``config.json``)."""

    target: str = config.FRACTURE_TARGET
    body_part: str | None = "elbow"
    arch: str = "small_cnn"
    img_size: int = 128
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 3e-3
    weights: str | None = None
    seed: int = config.DEFAULT_SEED
    data_dir: str | None = None
    run_name: str = "default"
    clahe: bool = False
    flip: bool = True
    rotation_degrees: float = 30.0
    zoom: float = 0.0
    contrast: float = 0.0
    patience: int = 4
    val_fraction: float = config.DEFAULT_VAL_FRACTION
    dropout_rate: float = 0.3
    parts: tuple[str, ...] = config.DEFAULT_BODY_PARTS

    def validate(self) -> None:
        """Raise ``ParameterError`` for any value that cannot work."""
        if self.target not in (config.FRACTURE_TARGET, config.BODY_PART_TARGET):
            raise ParameterError(f"target={self.target!r}: choose 'fracture' or 'body_part'")
        if self.target == config.FRACTURE_TARGET:
            if not self.body_part:
                raise ParameterError("a fracture model needs a body part: pass --part elbow (or hand, shoulder, ...)")
            self.body_part = config.parse_body_parts(self.body_part)[0]
        else:
            self.body_part = None
            self.parts = config.parse_body_parts(self.parts)
            if len(self.parts) < 2:
                raise ParameterError("the body-part classifier needs at least two parts, e.g. --parts elbow,hand")
        for name in ("img_size", "epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ParameterError(f"{name}={value!r} must be a positive integer")
        if not 0 < self.learning_rate < 1:
            raise ParameterError(f"learning_rate={self.learning_rate} must be between 0 and 1, e.g. 0.001")
        if not self.run_name or any(character in self.run_name for character in "/\\") or self.run_name.startswith("."):
            raise ParameterError(f"run_name={self.run_name!r} must be a plain folder name, e.g. 'default'")
        if self.weights in ("", "None", "none", "null"):
            self.weights = None
        self.augment_settings()  # validates the augmentation values
        self.preprocess_settings()

    @property
    def name(self) -> str:
        """The folder under ``models/``: the body part, or ``body_part`` for the classifier."""
        return self.body_part if self.target == config.FRACTURE_TARGET else config.BODY_PART_TARGET

    def preprocess_settings(self) -> PreprocessSettings:
        """The preprocessing this run trains with (and ``predict`` must repeat)."""
        return PreprocessSettings(img_size=int(self.img_size), clahe=bool(self.clahe))

    def augment_settings(self) -> AugmentSettings:
        """The training-time augmentation."""
        return AugmentSettings(flip=self.flip, rotation_degrees=self.rotation_degrees, zoom=self.zoom,
                               contrast=self.contrast)

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a JSON-ready dictionary."""
        values = asdict(self)
        values["parts"] = list(self.parts)
        return values


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    history: pd.DataFrame
    class_weights: dict[str, float]
    best_metrics: dict[str, float]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedRun:
    """A trained run ready to predict."""

    model: Any
    config: dict[str, Any]
    run_dir: Path
    preprocess: PreprocessSettings
    threshold: float
    classes: list[str]
    name: str


def run_dir_for(name: str, run_name: str, models_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return ``models/<name>/<run_name>``."""
    return Path(models_dir or config.MODELS_DIR) / name / run_name


def choose_strategy() -> Any:
    """Pick the distribution strategy: multi-worker with TF_CONFIG, mirrored on several GPUs, else default."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy: Any) -> bool:
    """Tell whether this process writes the run (always, except non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not os.environ.get("TF_CONFIG"):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def compute_class_weights(labels: Sequence[int] | np.ndarray) -> dict[int, float]:
    """The MURA paper's weights: w_abnormal = n_normal / n, w_normal = n_abnormal / n."""
    labels = np.asarray(labels).astype(int)
    if labels.size == 0:
        raise ParameterError("no training labels: the training split is empty")
    abnormal = float(labels.mean())
    if abnormal in (0.0, 1.0):
        raise FractureLibError("the training split holds only one class: check the labels or use more data")
    return {0: abnormal, 1: 1.0 - abnormal}


def _balanced_class_weights(labels: np.ndarray, count: int) -> dict[int, float]:
    """Inverse-frequency weights for the body-part classifier (mean weight 1)."""
    frequencies = np.bincount(labels, minlength=count) / len(labels)
    return {index: (1.0 / (count * frequency) if frequency > 0 else 0.0) for index, frequency in enumerate(frequencies)}


def _prepare_data(train_config: TrainConfig, verbose: int) -> tuple[Path, pd.DataFrame, ImageCache]:
    """Resolve the data root, index it and build (or reuse) the preprocessed cache."""
    data_root = config.resolve_data_root(train_config.data_dir)
    if data_root == config.DEMO_DATA_ROOT and not (data_root / config.MURA_DIRNAME).is_dir():
        synthetic.ensure_demo_dataset(data_root)
    # Index every part so the patient split is the same for every model trained on this root.
    index = mura.build_index(data_root, seed=train_config.seed, val_fraction=train_config.val_fraction)
    wanted = [train_config.body_part] if train_config.target == config.FRACTURE_TARGET else list(train_config.parts)
    missing = sorted(set(wanted) - set(index["body_part"]))
    if missing:
        raise FractureLibError(f"no images of {', '.join(missing)} in {data_root}: choose parts the data contain")
    subset = index[index["body_part"].isin(wanted)].reset_index(drop=True)
    cache = build_cache(subset, data_root, train_config.preprocess_settings(), progress=verbose > 0)
    return data_root, subset, cache


def _targets(frame: pd.DataFrame, train_config: TrainConfig) -> np.ndarray:
    """Training targets: 0/1 labels, or the class number of each image's body part."""
    if train_config.target == config.FRACTURE_TARGET:
        return frame["label"].to_numpy(dtype=np.float32)
    classes = list(train_config.parts)
    return frame["body_part"].map(classes.index).to_numpy(dtype=np.int32)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's learning rate to each epoch's logs (before CSVLogger writes them)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _compile(model: Any, train_config: TrainConfig) -> None:
    """Attach optimizer, loss and metrics for the run's target."""
    optimizer = keras.optimizers.Adam(learning_rate=train_config.learning_rate)
    if train_config.target == config.FRACTURE_TARGET:
        model.compile(optimizer=optimizer, loss=keras.losses.BinaryCrossentropy(),
                      weighted_metrics=[], metrics=[keras.metrics.AUC(name="auroc"),
                                                    keras.metrics.BinaryAccuracy(name="accuracy")])
    else:
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
                      weighted_metrics=[], metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def _monitor(train_config: TrainConfig) -> str:
    """The validation metric that drives early stopping, LR decay and checkpoints."""
    return "val_auroc" if train_config.target == config.FRACTURE_TARGET else "val_accuracy"


def train_model(train_config: TrainConfig, models_dir: str | os.PathLike[str] | None = None, verbose: int = 1,
                extra_callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train one run and write ``models/<name>/<run_name>/``; return what it produced."""
    train_config.validate()
    started = time.perf_counter()
    # The strategy must exist before other TensorFlow work when several workers cooperate.
    strategy = choose_strategy()
    keras.utils.set_random_seed(train_config.seed)
    data_root, subset, cache = _prepare_data(train_config, verbose)
    train_images, train_frame = cache.select("train")
    val_images, val_frame = cache.select("val")
    train_targets, val_targets = _targets(train_frame, train_config), _targets(val_frame, train_config)

    if train_config.target == config.FRACTURE_TARGET:
        class_weights = compute_class_weights(train_targets)
    else:
        class_weights = _balanced_class_weights(train_targets, len(train_config.parts))
    sample_weights = np.array([class_weights[int(label)] for label in train_targets], dtype=np.float32)

    replicas = strategy.num_replicas_in_sync
    global_batch = train_config.batch_size * replicas
    train_data = make_dataset(train_images, train_targets, global_batch, training=True,
                              augment=train_config.augment_settings(), seed=train_config.seed,
                              sample_weights=sample_weights)
    val_data = make_dataset(val_images, val_targets, global_batch)

    from fracture_lib.models import build_model, last_conv_layer_name

    num_classes = 1 if train_config.target == config.FRACTURE_TARGET else len(train_config.parts)
    with strategy.scope():
        model = build_model(train_config.arch, train_config.img_size, weights=train_config.weights,
                            num_classes=num_classes, dropout_rate=train_config.dropout_rate, seed=train_config.seed)
        _compile(model, train_config)

    final_dir = run_dir_for(train_config.name, train_config.run_name, models_dir)
    chief = _is_chief(strategy)
    suffix = "" if chief else f".worker-{strategy.cluster_resolver.task_id}"
    work_dir = final_dir.parent / f".partial-{train_config.run_name}{suffix}"
    backup_dir = work_dir / "backup"
    if not backup_dir.exists():
        # No interrupted run to resume: start from an empty work folder.
        shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    monitor = _monitor(train_config)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup_dir)),
        LearningRateLogger(),
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.1,
                                          patience=max(1, train_config.patience // 2), min_lr=1e-6),
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=train_config.patience,
                                      restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(work_dir / "best.keras"), monitor=monitor, mode="max",
                                        save_best_only=True),
        keras.callbacks.CSVLogger(str(work_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(work_dir / "logs"), histogram_freq=0, write_graph=False),
        *extra_callbacks,
    ]
    model.fit(train_data, validation_data=val_data, epochs=train_config.epochs, callbacks=callbacks,
              verbose=verbose if verbose in (0, 1, 2) else 1)

    history = _read_history(work_dir / "history.csv")
    val_probabilities = predict_images(model, val_images, batch_size=global_batch)
    predictions = _prediction_frame(val_frame, val_probabilities, train_config)
    best_metrics = _best_metrics(history, monitor)
    seconds = time.perf_counter() - started
    run_config = {
        **train_config.to_dict(),
        "name": train_config.name,
        "classes": list(train_config.parts) if train_config.target == config.BODY_PART_TARGET else [0, 1],
        "preprocess": train_config.preprocess_settings().to_dict(),
        "augment": train_config.augment_settings().to_dict(),
        "last_conv_layer": last_conv_layer_name(model),
        "index_fingerprint": mura.index_fingerprint(subset),
        "data_root": str(data_root),
        "synthetic_data": synthetic.is_synthetic(data_root),
        "images": {split: int((subset["split"] == split).sum()) for split in ("train", "val", "test")},
        "class_weights": {str(key): value for key, value in class_weights.items()},
        "global_batch_size": global_batch,
        "replicas": replicas,
        "strategy": type(strategy).__name__,
        "epochs_trained": int(len(history)),
        "best": best_metrics,
        "seconds": seconds,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": _library_versions(),
    }
    model.save(work_dir / "model.keras")
    (work_dir / "config.json").write_text(json.dumps(run_config, indent=2, default=str))
    predictions.to_csv(work_dir / "val_predictions.csv", index=False)
    for leftover in ("best.keras",):
        (work_dir / leftover).unlink(missing_ok=True)
    shutil.rmtree(backup_dir, ignore_errors=True)
    if chief:
        _publish_run(work_dir, final_dir)
    else:
        final_dir = work_dir
    return TrainResult(final_dir, history, {str(key): value for key, value in class_weights.items()},
                       best_metrics, seconds, run_config)


def _publish_run(work_dir: Path, final_dir: Path) -> None:
    """Swap the finished run into place, replacing an earlier run of the same name."""
    retired = final_dir.parent / f".retired-{final_dir.name}-{os.getpid()}"
    if final_dir.exists():
        os.replace(final_dir, retired)
    os.replace(work_dir, final_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _read_history(path: Path) -> pd.DataFrame:
    """Read CSVLogger's file, keeping the last row of each epoch (a resumed run may repeat one)."""
    if not path.is_file():
        return pd.DataFrame(columns=["epoch"])
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").reset_index(drop=True)


def _best_metrics(history: pd.DataFrame, monitor: str) -> dict[str, float]:
    """The epoch with the best monitored value and its metrics."""
    if history.empty or monitor not in history:
        return {}
    best = history.loc[history[monitor].idxmax()]
    return {key: float(value) for key, value in best.items()}


def _prediction_frame(frame: pd.DataFrame, probabilities: np.ndarray, run_config: TrainConfig | dict) -> pd.DataFrame:
    """One row per image: identifiers, the label and the model's probability (or per-class probabilities)."""
    target = run_config.target if isinstance(run_config, TrainConfig) else run_config["target"]
    columns = [column for column in ("path", "study", "patient", "body_part") if column in frame]
    result = frame[columns].copy()
    if target == config.FRACTURE_TARGET:
        result["label"] = frame["label"].astype(int).to_numpy()
        result["probability"] = probabilities.astype(float)
        return result
    classes = list(run_config.parts if isinstance(run_config, TrainConfig) else run_config["classes"])
    result["label"] = frame["body_part"].to_numpy()
    result["predicted"] = [classes[position] for position in probabilities.argmax(axis=1)]
    for position, name in enumerate(classes):
        result[f"prob_{name}"] = probabilities[:, position].astype(float)
    return result


def _library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on."""
    import cv2
    import sklearn
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "opencv": cv2.__version__,
            "scikit-learn": sklearn.__version__, "platform": platform.platform(), "executable": sys.executable}


def predict_images(model: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities for uint8 images (N, S, S): shape (N,) for a binary model, (N, C) otherwise."""
    images = np.asarray(images)
    if len(images) == 0:
        width = model.output_shape[-1]
        return np.zeros((0,) if width == 1 else (0, width), dtype=np.float32)
    probabilities = model.predict(make_dataset(images, batch_size=batch_size), verbose=0)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return probabilities[:, 0] if probabilities.shape[-1] == 1 else probabilities


def find_run(name: str, run_name: str | None = None, models_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder of run ``run_name`` of ``name`` (the most recent run when ``run_name`` is None)."""
    folder = Path(models_dir or config.MODELS_DIR) / name
    hint = (f"train one with `python -m fracture_lib train --target "
            f"{'body_part' if name == config.BODY_PART_TARGET else 'fracture --part ' + name}` or `make reports`")
    if run_name is not None:
        run_dir = folder / run_name
        if not (run_dir / "model.keras").is_file():
            raise ModelNotFoundError(f"no trained run {run_name!r} for {name!r} in {folder}: {hint}")
        return run_dir
    candidates = [path for path in folder.glob("*/model.keras") if not path.parent.name.startswith(".")] if folder.is_dir() else []
    if not candidates:
        raise ModelNotFoundError(f"no trained model for {name!r} in {folder}: {hint}")
    return max(candidates, key=lambda path: path.stat().st_mtime).parent


def load_run(run_dir: str | os.PathLike[str]) -> LoadedRun:
    """Load a run's model (Keras safe mode), its configuration and its decision threshold."""
    run_dir = Path(run_dir)
    config_path, model_path = run_dir / "config.json", run_dir / "model.keras"
    if not model_path.is_file() or not config_path.is_file():
        raise ModelNotFoundError(f"{run_dir} is not a complete run (model.keras and config.json expected): train it again")
    run_config = json.loads(config_path.read_text())
    try:
        model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except Exception as error:  # noqa: BLE001 - any loading failure becomes one clear line
        raise ModelNotFoundError(f"cannot load {model_path}: {type(error).__name__}: {error}. Train the run again") from None
    threshold = DEFAULT_THRESHOLD
    evaluation_path = run_dir / EVALUATION_FILENAME
    if evaluation_path.is_file():
        threshold = float(json.loads(evaluation_path.read_text()).get("threshold", DEFAULT_THRESHOLD))
    return LoadedRun(model=model, config=run_config, run_dir=run_dir,
                     preprocess=PreprocessSettings.from_dict(run_config["preprocess"]), threshold=threshold,
                     classes=list(run_config.get("classes", [])), name=run_config.get("name", run_dir.parent.name))


def predict_split(run: LoadedRun, index: pd.DataFrame, data_root: str | os.PathLike[str], split: str = "test",
                  cache_dir: str | os.PathLike[str] | None = None, batch_size: int = 64) -> pd.DataFrame:
    """Predict one split of ``index`` with ``run``, images taken from the cache with the run's settings.

    Returns the columns of ``val_predictions.csv`` for that split.
    """
    if run.config["target"] == config.FRACTURE_TARGET:
        wanted = [run.config["body_part"]]
    else:
        wanted = list(run.classes)
    subset = index[index["body_part"].isin(wanted)].reset_index(drop=True)
    if not (subset["split"] == split).any():
        raise FractureLibError(f"the {split} split has no images of {', '.join(wanted)} in {data_root}")
    cache = build_cache(subset, data_root, run.preprocess, cache_dir=cache_dir, progress=False)
    images, frame = cache.select(split)
    probabilities = predict_images(run.model, images, batch_size=batch_size)
    return _prediction_frame(frame, probabilities, run.config)


def list_runs(models_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One row per trained run: name, run, architecture, size, epochs, best validation metric, threshold."""
    folder = Path(models_dir or config.MODELS_DIR)
    rows = []
    for config_path in sorted(folder.glob("*/*/config.json")):
        run_dir = config_path.parent
        if run_dir.name.startswith(".") or not (run_dir / "model.keras").is_file():
            continue
        run_config = json.loads(config_path.read_text())
        best = run_config.get("best", {})
        row = {
            "name": run_dir.parent.name, "run_name": run_dir.name, "target": run_config.get("target"),
            "arch": run_config.get("arch"), "img_size": run_config.get("img_size"),
            "epochs_trained": run_config.get("epochs_trained"),
            "best_val_auroc": best.get("val_auroc"), "best_val_accuracy": best.get("val_accuracy"),
            "synthetic_data": run_config.get("synthetic_data"), "created": run_config.get("created"),
            "threshold": None, "run_dir": str(run_dir),
        }
        evaluation_path = run_dir / EVALUATION_FILENAME
        if evaluation_path.is_file():
            row["threshold"] = json.loads(evaluation_path.read_text()).get("threshold")
        rows.append(row)
    return pd.DataFrame(rows)
