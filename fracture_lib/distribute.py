"""Distribution and accelerator settings: the strategy, the replicas' data, precision, XLA, the learning rate.

Training runs on one code path under ``tf.distribute`` (``choose_strategy``): the default
strategy on one device, ``MirroredStrategy`` when several GPUs are visible and
``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a cluster. ``batch_size`` is per
replica; the global batch is ``batch_size`` times the replicas, and batch normalisation is
synchronised across them (``synchronize_batch_normalization``).

Under ``MultiWorkerMirroredStrategy`` each worker builds its own input pipeline
(``worker_datasets``): every global batch of shuffled rows (the same order on every worker) is
split into one contiguous slice per worker *before* any image is gathered or augmented, so each
worker reads and augments only its share instead of every batch. The slicing keeps the number of
steps (``ceil(images / global batch)``) the same on every worker, which Keras needs: it stops an
epoch after the dataset's number of batches, and two workers that disagree would wait for each
other forever.

``precision_policy`` applies a ``keras.mixed_precision`` policy to the models built inside it
and restores the previous global policy afterwards. Under ``mixed_float16`` Keras wraps the
optimizer in a ``LossScaleOptimizer`` when the model is compiled (dynamic loss scaling), because
the model's own dtype policy says so; ``mixed_bfloat16`` needs no loss scaling.

``scaled_learning_rate`` is the rule that adapts the learning rate to the global batch:
``linear`` (Goyal et al., 2017, arXiv:1706.02677) takes ``learning_rate`` as the rate of one
replica's batch and multiplies it by the number of replicas; ``none`` uses it unchanged.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Callable, Iterator

import keras
import tensorflow as tf

from fracture_lib.errors import ParameterError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LR_SCALINGS = ("linear", "none")
_cpu_precision_warned = False


def check_settings(precision: str, jit_compile: bool, lr_scaling: str) -> None:
    """Raise ``ParameterError`` for a precision, XLA or learning-rate-scaling value that cannot work."""
    if precision not in PRECISIONS:
        raise ParameterError(f"precision={precision!r} is unknown: choose {', '.join(PRECISIONS)}")
    if not isinstance(jit_compile, bool):
        raise ParameterError(f"jit_compile={jit_compile!r} must be true or false")
    if lr_scaling not in LR_SCALINGS:
        raise ParameterError(f"lr_scaling={lr_scaling!r} is unknown: choose {' or '.join(LR_SCALINGS)}")


def choose_strategy() -> Any:
    """Pick the distribution strategy: multi-worker with TF_CONFIG, mirrored on several GPUs, else default."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def strategy_name(strategy: Any) -> str:
    """The strategy's public name (``MultiWorkerMirroredStrategy``, ``MirroredStrategy`` or ``default``)."""
    for name in ("MultiWorkerMirroredStrategy", "MirroredStrategy"):
        if isinstance(strategy, getattr(tf.distribute, name)):
            return name
    return "default"


def is_multi_worker(strategy: Any) -> bool:
    """Tell whether ``strategy`` spans several worker processes (``MultiWorkerMirroredStrategy``)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: Any) -> bool:
    """Tell whether this process writes the run (always, except non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not os.environ.get("TF_CONFIG"):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def scaled_learning_rate(learning_rate: float, replicas: int, rule: str = "linear") -> float:
    """The learning rate the optimiser uses for a global batch of ``replicas`` replicas' batches.

    ``linear``: ``learning_rate`` is the rate of one replica's batch, multiplied by ``replicas``
    (Goyal et al., 2017); ``none``: unchanged. With one replica both give ``learning_rate``.
    """
    if rule not in LR_SCALINGS:
        raise ParameterError(f"lr_scaling={rule!r} is unknown: choose {' or '.join(LR_SCALINGS)}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ParameterError(f"replicas={replicas!r} must be a positive integer")
    return float(learning_rate) * replicas if rule == "linear" else float(learning_rate)


def _warn_precision_on_cpu(name: str) -> None:
    """Warn, once per process, that a mixed policy without a GPU is slower than float32."""
    global _cpu_precision_warned
    if name == "float32" or _cpu_precision_warned or tf.config.list_physical_devices("GPU"):
        return
    _cpu_precision_warned = True
    warnings.warn(f"precision={name} on a machine without a GPU: mixed precision is slow on a CPU "
                  "(use precision=float32 there)", UserWarning, stacklevel=4)


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[keras.DTypePolicy]:
    """Build models inside with the dtype policy ``name``; restore the previous global policy on exit.

    ``float32`` changes nothing. A mixed policy computes in float16 or bfloat16 and keeps the
    variables in float32; ``models.build_model`` keeps its output layer in float32, so the
    probabilities and the loss are float32. The policy is stored with each layer, so a model keeps
    it when it is compiled, saved and loaded after the block.

    Example:

    ```python
    with distribute.precision_policy("mixed_float16"):
        model = models.build_model("densenet169", 320)
    model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=True)
    ```
    """
    if name not in PRECISIONS:
        raise ParameterError(f"precision={name!r} is unknown: choose {', '.join(PRECISIONS)}")
    _warn_precision_on_cpu(name)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield keras.config.dtype_policy()
    finally:
        keras.config.set_dtype_policy(previous)


def worker_datasets(strategy: Any, make: Callable[[tuple[int, int] | None], tf.data.Dataset],
                    per_replica_batch: int) -> Any:
    """The dataset ``fit`` receives: ``make(None)``, or one shard per worker under multi-worker training.

    ``make(shard)`` returns a ``pipeline.make_dataset`` of global batches (``shard=None``) or this
    worker's slice of each (``shard=(workers, worker_index)``). Under
    ``MultiWorkerMirroredStrategy`` the slices are handed to ``distribute_datasets_from_function``
    (which ``fit`` accepts): each worker's slice is split into per-replica batches of
    ``per_replica_batch``, so a step still consumes the global batch. Any other strategy splits
    the global batches itself (``experimental_distribute_dataset``, inside ``fit``).
    """
    if not is_multi_worker(strategy):
        return make(None)

    def dataset_function(context: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = make((context.num_input_pipelines, context.input_pipeline_id))
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        return dataset.rebatch(per_replica_batch) if local_replicas > 1 else dataset

    return strategy.distribute_datasets_from_function(dataset_function)


def synchronize_batch_normalization(model: keras.Model) -> None:
    """Make batch normalisation use the global batch's statistics across replicas.

    Every replica then updates its moving averages identically, so all workers end with the
    same weights (and single-device and distributed training normalise alike).
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


@contextlib.contextmanager
def distributed_fit_fixes(model: keras.Model, strategy: Any, dataset: tf.data.Dataset) -> Iterator[None]:
    """Work around two Keras 3 bugs that stop ``fit`` with several replicas.

    Keras builds a distributed model (its loss and metrics) from the first batch averaged over
    the replicas, which fails whenever the replicas' parts of that batch differ in size (a
    validation split smaller than the global batch, under ``MirroredStrategy`` too) and always
    with multi-worker collectives; the model is built from the first batch of ``dataset``
    instead, a local (undistributed) dataset shaped like the training data (its variables are
    mirrored already). Under ``MultiWorkerMirroredStrategy`` Keras also averages each step's
    scalar metrics with ``strategy.reduce("MEAN", value, axis=0)``, which fails there; scalars
    are averaged over replicas with ``axis=None``. With one replica this does nothing.
    """
    if strategy.num_replicas_in_sync == 1 and not is_multi_worker(strategy):
        yield
        return
    from keras.src.backend.tensorflow import trainer as tensorflow_trainer

    with strategy.scope():
        model._symbolic_build(data_batch=next(iter(dataset)))  # noqa: SLF001 - see the docstring
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None  # noqa: SLF001
    if not is_multi_worker(strategy):
        yield
        return
    original_reduce = tensorflow_trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str = "auto") -> Any:
        if reduction in ("auto", "mean"):
            return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return original_reduce(values, strategy, reduction)

    tensorflow_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tensorflow_trainer.reduce_per_replica = original_reduce
