"""Training a fracture model per body part (or the body-part classifier).

A run lives in ``models/<name>/<run_name>/`` (``runs`` finds, loads and lists them). It holds ``model.keras``, ``history.csv``,
``config.json`` (every parameter, library versions, the index fingerprint, the preprocessing
settings) and ``val_predictions.csv``. The run is assembled in a hidden sibling folder and
renamed into place only when training has finished, so a failed run never replaces a good one;
``BackupAndRestore`` keeps its state there so an interrupted run resumes where it stopped.

Training is distributed with ``tf.distribute`` on one code path (``distribute``): the default
strategy on one device, ``MirroredStrategy`` when several GPUs are visible and
``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a cluster. ``batch_size`` is per
replica; the global batch is ``batch_size`` times the number of replicas, the learning rate
follows ``lr_scaling``, and batch normalisation is synchronised across replicas. ``precision``,
``jit_compile`` and ``augment_on`` choose mixed precision, XLA and where augmentation runs
(``device_augment``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
import pandas as pd

from fracture_lib import box_supervision, config, crops, datasets, device_augment, distribute, outliers, recipe, resume, synthetic
from fracture_lib.boxes import BoxTargets
from fracture_lib.files import replace_path
from fracture_lib.errors import FractureLibError, ParameterError
from fracture_lib.models import build_model, last_conv_layer_name
from fracture_lib.pipeline import make_dataset
from fracture_lib.cache import build_cache
from fracture_lib.image_rows import ImageRows
from fracture_lib.runs import LoadedRun, run_dir_for
from fracture_lib.train_config import TrainConfig


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    history: pd.DataFrame
    class_weights: dict[str, float]
    best_metrics: dict[str, float]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)


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


def prepare_data_root(data_dir: str | os.PathLike[str] | None = None) -> datasets.DataSource:
    """Resolve the data source (``datasets.resolve_source``); generate the demo set when it is the demo root.

    The demo set is generated only when it is missing or was made by another generator version.
    """
    source = datasets.resolve_source(data_dir)
    if source.kind == "mura" and source.root.resolve() == config.DEMO_DATA_ROOT.resolve():
        synthetic.ensure_demo_dataset(source.root)
    return source


def training_index(train_config: TrainConfig) -> tuple[datasets.DataSource, pd.DataFrame]:
    """Return the data source and the index rows a run uses (its body part, or the classifier's parts).

    A pooled fracture model (``pool_parts``) also gets the *training* films of the pooled parts;
    its validation and test rows stay those of its own part.
    """
    train_config.validate()
    source = prepare_data_root(train_config.data_dir)
    # Index every part so the patient split is the same for every model trained on this source.
    index = datasets.build_index(source, seed=train_config.split_seed, val_fraction=train_config.val_fraction,
                                 keep_truncated=train_config.keep_truncated)
    wanted = [train_config.body_part] if train_config.target == config.FRACTURE_TARGET else list(train_config.parts)
    pooled = [part for part in train_config.pool_parts if part != "all"]
    missing = sorted(set(wanted + pooled) - set(index["body_part"]))
    if missing:
        present = ", ".join(datasets.sort_parts(index["body_part"].unique()))
        raise FractureLibError(f"no images of {', '.join(missing)} in {source.location} (present: {present}): "
                               "choose parts the data contain")
    own = index["body_part"].isin(wanted)
    if train_config.pool_parts:
        pool = index["body_part"].notna() if "all" in train_config.pool_parts else index["body_part"].isin(pooled)
        own |= pool & (index["split"] == "train")
    return source, index[own].reset_index(drop=True)


def own_part_rows(subset: pd.DataFrame, run_config: TrainConfig | dict[str, Any]) -> pd.DataFrame:
    """The rows of a fracture run's own body part (a pooled run also trains on other parts' films)."""
    values = run_config.to_dict() if isinstance(run_config, TrainConfig) else run_config
    if values.get("target") != config.FRACTURE_TARGET:
        return subset
    return subset[subset["body_part"] == values["body_part"]].reset_index(drop=True)


def dataset_summary(train_config: TrainConfig) -> tuple[pd.DataFrame, dict[str, float]]:
    """Images per split and class of a run's data, and the class weights its loss uses; trains nothing."""
    _, subset = training_index(train_config)
    column = "label" if train_config.target == config.FRACTURE_TARGET else "body_part"
    counts = subset.groupby(["split", column]).size().unstack(fill_value=0)
    counts = counts.reindex([split for split in ("train", "val", "test") if split in counts.index])
    if train_config.target == config.FRACTURE_TARGET:
        counts = counts.rename(columns=lambda label: _class_name(label, train_config))
    counts.columns.name = "class"
    counts["total"] = counts.sum(axis=1)
    train_targets = _targets(subset[subset["split"] == "train"], train_config)
    weights = _class_weights(train_targets, train_config)
    return counts, {_class_name(key, train_config): value for key, value in weights.items()}


def _class_weights(train_targets: np.ndarray, train_config: TrainConfig) -> dict[int, float]:
    """The loss weight of each class: the MURA paper's for fractures, balanced for body parts."""
    if train_config.target == config.FRACTURE_TARGET:
        return compute_class_weights(train_targets)
    return _balanced_class_weights(train_targets, len(train_config.parts))


def _class_name(target: int, train_config: TrainConfig) -> str:
    """A readable class name: ``normal``/``abnormal``, or the body part."""
    if train_config.target == config.FRACTURE_TARGET:
        return ("normal", "abnormal")[int(target)]
    return train_config.parts[int(target)]


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


class StopWhenPerfect(keras.callbacks.Callback):
    """Stops training once the monitored validation metric reaches 1.0, its ceiling.

    No later epoch can then beat it, and EarlyStopping keeps the first best epoch, so the epochs
    that would follow change nothing that is saved (the body-part classifier often gets there in
    one epoch on the demo data).
    """

    def __init__(self, monitor: str) -> None:
        super().__init__()
        self.monitor = monitor

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None and logs.get(self.monitor, 0.0) >= 1.0:
            self.model.stop_training = True


def _compile(model: Any, train_config: TrainConfig, steps_per_epoch: int, learning_rate: float) -> None:
    """Attach optimizer (with its schedule and weight averaging), loss and metrics for the run's target.

    ``learning_rate`` is the rate for the global batch (``distribute.scaled_learning_rate``). A
    mixed_float16 model gets Keras's loss scaling here; ``jit_compile`` compiles the step with XLA.
    """
    schedule = recipe.learning_rate_schedule(learning_rate, train_config.schedule, train_config.epochs,
                                             steps_per_epoch, train_config.warmup_epochs)
    optimizer = recipe.make_optimizer(train_config.optimizer, schedule, train_config.weight_decay,
                                      train_config.ema_momentum)
    if train_config.target == config.FRACTURE_TARGET:
        model.compile(optimizer=optimizer, loss=recipe.make_binary_loss(train_config.loss, train_config.focal_gamma),
                      weighted_metrics=[], metrics=[keras.metrics.AUC(name="auroc"),
                                                    keras.metrics.BinaryAccuracy(name="accuracy")],
                      jit_compile=bool(train_config.jit_compile))
    else:
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
                      weighted_metrics=[], metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                      jit_compile=bool(train_config.jit_compile))


def _monitor(train_config: TrainConfig) -> str:
    """The validation metric that drives early stopping, LR decay and checkpoints."""
    return "val_auroc" if train_config.target == config.FRACTURE_TARGET else "val_accuracy"


def train_model(train_config: TrainConfig, models_dir: str | os.PathLike[str] | None = None, verbose: int = 1,
                extra_callbacks: Sequence[Any] = (), restart: bool = False) -> TrainResult:
    """Train one run and write ``models/<name>/<run_name>/``; return what it produced.

    An interrupted run (same name, same models folder) resumes from its last completed epoch when
    its settings and data are unchanged (see ``resume``); other settings are refused unless
    ``restart`` discards the interrupted attempt. ``extra_callbacks`` are appended to the Keras
    callbacks (the tests use one to interrupt).
    """
    train_config.validate()
    started = time.perf_counter()
    # The strategy must exist before other TensorFlow work when several workers cooperate.
    strategy = distribute.choose_strategy()
    keras.utils.set_random_seed(train_config.seed)
    source, subset = training_index(train_config)
    if train_config.box_loss_weight > 0:
        # Data without any fracture box are refused before their images are cached.
        box_supervision.check_source_has_boxes(source)
    if train_config.train_crop:
        crops.check_source_has_boxes(source)
    # The global batch is split over the replicas: each one sees `batch_size` images per step.
    replicas = strategy.num_replicas_in_sync
    global_batch = train_config.batch_size * replicas
    # An interrupted attempt with other settings is refused before any image is read.
    final_dir = run_dir_for(train_config.name, train_config.run_name, models_dir)
    chief = distribute.is_chief(strategy)
    suffix = "" if chief else f".worker-{strategy.cluster_resolver.task_id}"
    work_dir = final_dir.parent / f".partial-{train_config.run_name}{suffix}"
    settings = resume.resume_settings(train_config.to_dict(), datasets.index_fingerprint(subset), global_batch)
    resuming = resume.check_resumable(work_dir, settings, restart=restart)
    cache = build_cache(subset, source.root, train_config.preprocess_settings(), progress=verbose > 0)
    train_images, train_frame = cache.select("train")
    val_images, val_frame = cache.select("val")
    train_targets, val_targets = _targets(train_frame, train_config), _targets(val_frame, train_config)

    class_weights = _class_weights(train_targets, train_config)

    # With augment_on=device the pipeline only shuffles; the training step augments (device_augment).
    pipeline_augment = train_config.augment_settings() if train_config.augment_on == "cpu" else None
    train_weights, val_weights = _sample_weights(train_targets, class_weights), _sample_weights(val_targets, class_weights)

    num_classes = 1 if train_config.target == config.FRACTURE_TARGET else len(train_config.parts)
    learning_rate = distribute.scaled_learning_rate(train_config.learning_rate, replicas, train_config.lr_scaling)
    with strategy.scope():
        with distribute.precision_policy(train_config.precision):
            # Trained on crops, the model takes any input size: crops in training, whole films in validation.
            model = build_model(train_config.arch, train_config.img_size, weights=train_config.weights,
                                num_classes=num_classes, dropout_rate=train_config.dropout_rate, seed=train_config.seed,
                                head=train_config.head, any_input_size=bool(train_config.train_crop))
            # What fit trains: the model, or the augmentation layer then the model (sharing its weights).
            fitted = model if pipeline_augment is not None else device_augment.training_model(
                model, train_config.augment_settings(), seed=train_config.seed)
            if train_config.box_loss_weight > 0:
                fitted = box_supervision.training_model(model, train_config.box_loss_weight, seed=train_config.seed)
        if replicas > 1:
            distribute.synchronize_batch_normalization(model)
        _compile(fitted, train_config, steps_per_epoch=int(np.ceil(len(train_images) / global_batch)),
                 learning_rate=learning_rate)

    train_boxes, val_boxes = _box_targets(train_config, model, source, train_frame, len(val_images))
    crop_size, crop_points = None, None
    if train_config.train_crop:
        crop_size = train_config.train_crop
        crop_points = crops.crop_points(train_images, train_frame, source, train_config.img_size, train_config.seed)
    # Under MultiWorkerMirroredStrategy each worker reads and augments only its slice of every batch.
    train_data = distribute.worker_datasets(
        strategy, lambda shard: make_dataset(train_images, train_targets, global_batch, training=True,
                                             augment=pipeline_augment, seed=train_config.seed,
                                             sample_weights=train_weights, shard=shard, box_targets=train_boxes,
                                             crop_size=crop_size, crop_points=crop_points),
        train_config.batch_size)
    # Validation images carry the same class weights, so the two loss curves are comparable.
    val_data = distribute.worker_datasets(
        strategy, lambda shard: make_dataset(val_images, val_targets, global_batch, sample_weights=val_weights,
                                             shard=shard, box_targets=val_boxes), train_config.batch_size)

    monitor = _monitor(train_config)
    earlier_best = resume.prepare_work_dir(work_dir, settings, monitor, resume=resuming)
    callbacks = [*_callbacks(train_config, work_dir, earlier_best), *extra_callbacks]
    first_batch = make_dataset(val_images, val_targets, global_batch, sample_weights=val_weights, box_targets=val_boxes)
    with distribute.distributed_fit_fixes(fitted, strategy, first_batch):
        # The tf.data pipeline shuffles every epoch; Keras's own shuffle does not apply to a Dataset.
        fitted.fit(train_data, validation_data=val_data, epochs=train_config.epochs, callbacks=callbacks,
                   shuffle=False, verbose=verbose if verbose in (0, 1, 2) else 1)
        history = resume.read_history(work_dir / resume.HISTORY_FILENAME)
        best_metrics = _best_metrics(history, monitor)
        if (work_dir / resume.BEST_WEIGHTS).is_file():
            # The checkpoint of the best epoch (the averaged weights with EMA) is the model saved, also
            # when the best epoch came before an interruption, which EarlyStopping did not see.
            fitted.load_weights(work_dir / resume.BEST_WEIGHTS)
        if train_config.train_crop:
            # The model saved takes whole films at img_size, like any other run's; the weights are the same.
            model = _whole_film_model(model, train_config, num_classes)
        val_probabilities = predict_images(model, val_images, batch_size=global_batch, tta=train_config.tta)
    predictions = _prediction_frame(val_frame, val_probabilities, train_config)
    # How the training images look to the model, for predict's unfamiliar-input check (see outliers).
    outlier_rule = outliers.fit_run_rule(model, train_images, val_images, batch_size=global_batch)
    seconds = time.perf_counter() - started
    run_config = {
        **_run_description(train_config, model, source, subset, class_weights),
        "global_batch_size": global_batch,
        "replicas": replicas,
        "strategy": distribute.strategy_name(strategy),
        # The optimiser's (peak) rate for the global batch: learning_rate scaled by lr_scaling.
        "effective_learning_rate": learning_rate,
        "epochs_trained": int(len(history)),
        "best_epoch": int(best_metrics["epoch"]) if "epoch" in best_metrics else None,
        "best": best_metrics,
        "seconds": seconds,
        "outlier_rule": {"false_alarm_target": outliers.FALSE_ALARM_TARGET, "level": outlier_rule.level,
                         "distance_threshold": outlier_rule.distance_threshold,
                         "probability_threshold": outlier_rule.probability_threshold},
    }
    model.save(work_dir / "model.keras")
    outliers.save_rule(outlier_rule, work_dir)
    (work_dir / "config.json").write_text(json.dumps(run_config, indent=2, default=str))
    predictions.to_csv(work_dir / "val_predictions.csv", index=False)
    resume.finish_work_dir(work_dir)
    if chief:
        replace_path(work_dir, final_dir)
    else:
        # Other workers of a multi-worker run keep their (identical) copy in their hidden work folder.
        final_dir = work_dir
    return TrainResult(final_dir, history, {str(key): value for key, value in class_weights.items()},
                       best_metrics, seconds, run_config)


def _whole_film_model(trained: keras.Model, train_config: TrainConfig, num_classes: int) -> keras.Model:
    """The network of a run trained on crops, built for whole films at ``img_size``, with the trained weights."""
    with distribute.precision_policy(train_config.precision):
        model = build_model(train_config.arch, train_config.img_size, num_classes=num_classes,
                            dropout_rate=train_config.dropout_rate, seed=train_config.seed, head=train_config.head)
    model.set_weights(trained.get_weights())
    return model


def _box_targets(train_config: TrainConfig, model: keras.Model, source: datasets.DataSource, train_frame: pd.DataFrame,
                 val_count: int) -> tuple[BoxTargets | None, BoxTargets | None]:
    """The box targets of the training images, and the empty ones of validation; None without box supervision.

    Validation teaches nothing about boxes (every target unknown), so ``val_loss`` stays the
    classifier's loss alone, as without box supervision.
    """
    if train_config.box_loss_weight <= 0:
        return None, None
    train_boxes = box_supervision.training_targets(train_frame, source, model, train_config.img_size)
    return train_boxes, BoxTargets.unknown(val_count, train_config.img_size, train_boxes.grid)


def _callbacks(train_config: TrainConfig, work_dir: Path, earlier_best: float | None) -> list[Any]:
    """Resume, learning-rate decay, early stopping, checkpoints and logs, all kept in ``work_dir``."""
    monitor = _monitor(train_config)
    return [
        # With EMA, the averaged weights are swapped in first, so every callback below sees them.
        *recipe.ema_callbacks(train_config.ema_momentum),
        keras.callbacks.BackupAndRestore(str(work_dir / resume.BACKUP_DIRNAME)),
        LearningRateLogger(),
        *recipe.schedule_callbacks(train_config.schedule, train_config.patience),
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=train_config.patience,
                                      restore_best_weights=True),
        StopWhenPerfect(monitor),
        # The best weights so far, kept across an interruption (a resumed run starts from the last epoch).
        keras.callbacks.ModelCheckpoint(str(work_dir / resume.BEST_WEIGHTS), monitor=monitor, mode="max",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=earlier_best),
        keras.callbacks.CSVLogger(str(work_dir / resume.HISTORY_FILENAME), append=True),
        keras.callbacks.TensorBoard(log_dir=str(work_dir / "logs"), histogram_freq=0, write_graph=False),
    ]


def _run_description(train_config: TrainConfig, model: keras.Model, source: datasets.DataSource, subset: pd.DataFrame,
                     class_weights: dict[int, float]) -> dict[str, Any]:
    """What ``config.json`` records besides the training outcome: parameters, data, model and versions."""
    return {
        **train_config.to_dict(),
        "name": train_config.name,
        "dropout_rate": float(model.get_layer("dropout").rate),
        "classes": list(train_config.parts) if train_config.target == config.BODY_PART_TARGET else [0, 1],
        "preprocess": train_config.preprocess_settings().to_dict(),
        "augment": train_config.augment_settings().to_dict(),
        "last_conv_layer": last_conv_layer_name(model),
        # Evaluation checks the rows of the run's own part; a pooled run also records all it trained on.
        "index_fingerprint": datasets.index_fingerprint(own_part_rows(subset, train_config)),
        "training_fingerprint": datasets.index_fingerprint(subset),
        "data_root": str(source.root),
        "data_source": source.to_dict(),
        "synthetic_data": source.synthetic,
        "images": {split: int((subset["split"] == split).sum()) for split in ("train", "val", "test")},
        "class_weights": {str(key): value for key, value in class_weights.items()},
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def _sample_weights(targets: np.ndarray, class_weights: dict[int, float]) -> np.ndarray:
    """Each image's loss weight: the weight of its class."""
    return np.array([class_weights[int(target)] for target in targets], dtype=np.float32)


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


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on."""
    import cv2
    import sklearn

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "opencv": cv2.__version__,
            "scikit-learn": sklearn.__version__, "platform": platform.platform(), "executable": sys.executable}


def predict_images(model: Any, images: np.ndarray | ImageRows, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    """Probabilities for uint8 images (N, S, S): shape (N,) for a binary model, (N, C) otherwise.

    With ``tta`` (test-time augmentation) each image is also scored mirrored left to right, and
    the two probabilities are averaged.
    """
    if len(images) == 0:
        width = model.output_shape[-1]
        return np.zeros((0,) if width == 1 else (0, width), dtype=np.float32)
    # The images (a view of the cache, or an array) are read batch by batch, never copied whole.
    probabilities = np.asarray(model.predict(make_dataset(images, batch_size=batch_size), verbose=0), dtype=np.float32)
    if tta:
        mirrored = make_dataset(images, batch_size=batch_size, mirror=True)
        probabilities = (probabilities + np.asarray(model.predict(mirrored, verbose=0), dtype=np.float32)) / 2.0
    return probabilities[:, 0] if probabilities.shape[-1] == 1 else probabilities


def predict_split(run: LoadedRun, index: pd.DataFrame, data_root: str | os.PathLike[str] | datasets.DataSource, split: str = "test",
                  cache_dir: str | os.PathLike[str] | None = None, batch_size: int = 64,
                  parts: Sequence[str] | None = None) -> pd.DataFrame:
    """Predict one split of ``index`` with ``run``, images taken from the cache with the run's settings.

    ``parts`` chooses the body parts scored (default: a fracture model's own part, the
    classifier's classes); the two-stage evaluation scores studies of other parts that the
    classifier sent to this model. Returns the columns of ``val_predictions.csv`` for that split.
    """
    if parts is not None:
        wanted = list(parts)
    elif run.config["target"] == config.FRACTURE_TARGET:
        wanted = [run.config["body_part"]]
    else:
        wanted = list(run.classes)
    subset = index[index["body_part"].isin(wanted)].reset_index(drop=True)
    if not (subset["split"] == split).any():
        raise FractureLibError(f"the {split} split has no images of {', '.join(wanted)} in {data_root}")
    root = datasets.resolve_source(data_root).root
    cache = build_cache(subset, root, run.preprocess, cache_dir=cache_dir, progress=False)
    images, frame = cache.select(split)
    probabilities = predict_images(run.model, images, batch_size=batch_size, tta=bool(run.config.get("tta", False)))
    return _prediction_frame(frame, probabilities, run.config)
