"""Training-side benchmarks: pipeline efficiency, the end-to-end epoch and training speed.

- **pipeline efficiency**: ``small_cnn`` training images/s fed by the real pipeline divided by
  its images/s on the same kind of images already held in memory as augmented float tensors (the
  model's own limit), through ``model.fit`` as training uses it. Each measurement runs in a
  fresh process (``python -m fracture_lib.bench.training efficiency-worker``), so no prefetch
  thread of one source works while the other is timed; its first epoch (building the training
  function, starting the threads) is discarded, and each epoch is many times longer than the
  prefetch buffer. Several repeats alternate which source runs first; the median of the
  per-repeat ratios and their spread are reported, with the CPU time per image of each source.
- **epoch time**: one ``small_cnn`` epoch at 128 px fed by the pipeline versus the original
  serial loader, with the per-image decode, augmentation and train-step costs behind the ratio.
- **training speed**: images/s of ``small_cnn`` at 128 and 224 px and ``densenet121`` at 224 px.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fracture_lib import config
from fracture_lib.bench.measure import Measurement, best, spread, total
from fracture_lib.errors import FractureLibError, ParameterError

if TYPE_CHECKING:
    from fracture_lib.bench import Context

SOURCES = ("pipeline", "memory")
# Distinct augmented batches held in memory: a model trained on one batch over and over fits it
# almost perfectly, and the tiny gradients that follow run measurably slower on a CPU.
MEMORY_BATCHES = 16


class EpochTimer:
    """Builds a Keras callback that records the wall and CPU time of every epoch."""

    def __init__(self) -> None:
        import keras

        timer = self
        self.epochs: list[tuple[float, float]] = []

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                timer._start = (time.perf_counter(), time.process_time())

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                wall, cpu = timer._start
                timer.epochs.append((time.perf_counter() - wall, time.process_time() - cpu))

        self.callback = Callback()

    def fit(self, model: Any, data: Any, steps: int, batch_size: int, epochs: int = 1) -> list[Measurement]:
        """Train ``model`` for ``epochs`` epochs of ``steps`` steps; return each epoch's timing."""
        model.fit(data, steps_per_epoch=steps, epochs=epochs, shuffle=False, verbose=0, callbacks=[self.callback])
        return [Measurement(steps * batch_size, seconds, cpu_seconds) for seconds, cpu_seconds in self.epochs[-epochs:]]


def compiled_model(arch: str, img_size: int, seed: int, jit_compile: bool | str = "auto") -> Any:
    """A freshly built model compiled as ``train`` compiles a fracture model (Adam, cross-entropy, AUROC)."""
    import keras

    from fracture_lib.models import build_model

    model = build_model(arch, img_size, weights=None, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss=keras.losses.BinaryCrossentropy(),
                  weighted_metrics=[], metrics=[keras.metrics.AUC(name="auroc")], jit_compile=jit_compile)
    return model


def pipeline_data(images: Any, labels: np.ndarray, batch_size: int, seed: int) -> Any:
    """The real training pipeline (shuffle, augmentation, batches, prefetch) with unit weights, repeated."""
    from fracture_lib.pipeline import AugmentSettings, make_dataset

    weights = np.ones(len(images), dtype=np.float32)
    return make_dataset(images, labels, batch_size, training=True, augment=AugmentSettings(), seed=seed,
                        sample_weights=weights).repeat()


def memory_data(images: Any, labels: np.ndarray, batch_size: int, seed: int, batches: int = MEMORY_BATCHES) -> Any:
    """The same kind of batches as ``pipeline_data``, already augmented and held as tensors in memory.

    ``batches`` real pipeline batches are drawn once, then cycled forever from a cached dataset
    with the pipeline's element structure (images, labels, weights; batch dimension unknown), so
    a model's training function serves both sources and only the feeding differs.
    """
    import tensorflow as tf

    drawn = list(pipeline_data(images, labels, batch_size, seed).take(max(1, batches)))
    # Held in host memory, where the pipeline's batches arrive too (not on a GPU).
    with tf.device("/CPU:0"):
        tensors = tuple(tf.concat([batch[part] for batch in drawn], axis=0) for part in range(3))
    return (tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size).cache().repeat()
            .prefetch(tf.data.AUTOTUNE))


# ---------------------------------------------------------------------------------------------
# Pipeline efficiency: one source per fresh process
# ---------------------------------------------------------------------------------------------


def efficiency_worker(images: np.ndarray, labels: np.ndarray, source: str, batch_size: int = 32, steps: int = 64,
                      epochs: int = 3, seed: int = config.DEFAULT_SEED, arch: str = "small_cnn") -> dict[str, Any]:
    """Train a fresh model fed by one source for ``1 + epochs`` epochs of ``steps``; time all but the first.

    ``source`` is ``"pipeline"`` (``pipeline_data``) or ``"memory"`` (``memory_data``). Returns
    the images/s and CPU milliseconds per image (all threads of this process) over the timed
    epochs, each timed epoch's rate, and how long building and the warm-up epoch took.
    """
    import keras

    if source not in SOURCES:
        raise ParameterError(f"source={source!r}: choose from {', '.join(SOURCES)}")
    for name, value in (("batch_size", batch_size), ("steps", steps), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ParameterError(f"{name}={value!r} must be a positive integer")
    images = np.asarray(images)
    if images.ndim != 3 or len(images) < batch_size:
        raise ParameterError(f"images must be (N, S, S) with N >= batch_size={batch_size}, got {images.shape}")
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = compiled_model(arch, images.shape[1], seed)
    make_data = pipeline_data if source == "pipeline" else memory_data
    data = make_data(images, np.asarray(labels, dtype=np.float32), batch_size, seed)
    timer = EpochTimer()
    timed = timer.fit(model, data, steps, batch_size, epochs=1 + epochs)[1:]
    warm_up_seconds = time.perf_counter() - started - sum(m.seconds for m in timed)
    overall = total(timed)
    return {"source": source, "arch": arch, "img_size": int(images.shape[1]), "batch_size": batch_size,
            "steps_per_epoch": steps, "timed_epochs": epochs, "images_per_second": round(overall.rate, 2),
            "cpu_ms_per_image": round(overall.cpu_ms_per_item, 4),
            "epoch_images_per_second": [round(m.rate, 2) for m in timed],
            "build_and_warm_up_seconds": round(warm_up_seconds, 2), "pid": os.getpid()}


def run_efficiency_worker(images_file: str | os.PathLike[str], labels_file: str | os.PathLike[str], source: str,
                          batch_size: int = 32, steps: int = 64, epochs: int = 3, seed: int = config.DEFAULT_SEED,
                          timeout: float = 900.0) -> dict[str, Any]:
    """Run ``efficiency_worker`` in a fresh Python process on arrays saved as ``.npy``; return its result."""
    command = [sys.executable, "-m", "fracture_lib.bench.training", "efficiency-worker", "--source", source,
               "--images", str(images_file), "--labels", str(labels_file), "--batch-size", str(batch_size),
               "--steps", str(steps), "--epochs", str(epochs), "--seed", str(seed)]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment,
                                  cwd=str(config.PROJECT_ROOT))
    except subprocess.TimeoutExpired:
        raise FractureLibError(f"the {source} efficiency worker did not finish within {timeout:.0f} s") from None
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode != 0 or not lines:
        reason = (finished.stderr.strip().splitlines() or ["no output"])[-1]
        raise FractureLibError(f"the {source} efficiency worker failed (exit {finished.returncode}): {reason}")
    return json.loads(lines[-1])


def efficiency_inputs(context: Context, cache: Any) -> tuple[Path, Path]:
    """The images and labels files the efficiency workers read.

    The workers read the cache's own ``images.npy`` when the cache is a whole memory-mapped file
    (no copy); only an in-memory or view cache is saved beside it first.
    """
    from fracture_lib.cache import IMAGES_FILENAME

    labels_file = context.cache_dir / "efficiency-labels.npy"
    np.save(labels_file, cache.index["label"].to_numpy(dtype=np.float32))
    cache_file = Path(cache.path) / IMAGES_FILENAME
    if isinstance(cache.images, np.memmap) and cache_file.is_file() and len(cache.images) == len(cache.index):
        return cache_file, labels_file
    images_file = context.cache_dir / "efficiency-images.npy"
    np.save(images_file, np.asarray(cache.images))
    return images_file, labels_file


def bench_efficiency(context: Context) -> dict[str, Any]:
    """Pipeline-fed over in-memory small_cnn training speed at 128 px, one fresh process per measurement.

    ``efficiency_repeats`` repeats each run both sources, the first source alternating between
    repeats; the efficiency is the median of the per-repeat ratios, with their minimum, maximum
    and quartiles, and the CPU-time estimate (in-memory over pipeline CPU ms per image).
    """
    plan, img_size = context.plan, context.plan.sizes[0]
    cache = context.caches[img_size]
    images_file, labels_file = efficiency_inputs(context, cache)
    runs: dict[str, list[dict[str, Any]]] = {source: [] for source in SOURCES}
    for repeat in range(plan.efficiency_repeats):
        for source in (SOURCES if repeat % 2 == 0 else tuple(reversed(SOURCES))):
            runs[source].append(run_efficiency_worker(images_file, labels_file, source, plan.batch_size,
                                                      plan.efficiency_steps, plan.efficiency_epochs, context.seed))
    ratios = [ours["images_per_second"] / memory["images_per_second"]
              for ours, memory in zip(runs["pipeline"], runs["memory"])]
    cpu_ratios = [memory["cpu_ms_per_image"] / ours["cpu_ms_per_image"]
                  for ours, memory in zip(runs["pipeline"], runs["memory"])]
    rates = {source: [run["images_per_second"] for run in measured] for source, measured in runs.items()}
    cpu = {source: [run["cpu_ms_per_image"] for run in measured] for source, measured in runs.items()}
    efficiency, cpu_efficiency = spread(ratios), spread(cpu_ratios)
    result = {"arch": "small_cnn", "img_size": img_size, "batch_size": plan.batch_size, "images": len(cache.index),
              "method": "one fresh process per source and repeat, through model.fit; first epoch discarded; "
                        "the first source alternates between repeats",
              "steps_per_epoch": plan.efficiency_steps, "timed_epochs": plan.efficiency_epochs,
              "repeats": plan.efficiency_repeats, "memory_batches": MEMORY_BATCHES,
              "in_memory_images_per_second": round(float(np.median(rates["memory"])), 1),
              "pipeline_images_per_second": round(float(np.median(rates["pipeline"])), 1),
              "in_memory_cpu_ms_per_image": round(float(np.median(cpu["memory"])), 4),
              "pipeline_cpu_ms_per_image": round(float(np.median(cpu["pipeline"])), 4),
              "efficiency": efficiency["median"], "efficiency_spread": efficiency,
              "efficiency_per_repeat": [round(value, 3) for value in ratios],
              # CPU time per image hardly depends on other processes: the CPU-bound estimate.
              "cpu_efficiency": cpu_efficiency["median"], "cpu_efficiency_spread": cpu_efficiency,
              "runs": runs}
    context.log(f"efficiency small_cnn {img_size} px ({plan.efficiency_repeats} repeats, fresh processes): pipeline "
                f"{result['pipeline_images_per_second']:.0f} / in memory {result['in_memory_images_per_second']:.0f} "
                f"images/s; median ratio {efficiency['median']:.3f} (min {efficiency['min']:.3f}, max "
                f"{efficiency['max']:.3f}); CPU ms per image {result['pipeline_cpu_ms_per_image']:.2f} / "
                f"{result['in_memory_cpu_ms_per_image']:.2f}, ratio {cpu_efficiency['median']:.3f}")
    return result


# ---------------------------------------------------------------------------------------------
# Epoch time and training speed
# ---------------------------------------------------------------------------------------------


def bench_epoch(context: Context, efficiency: dict[str, Any], throughput: list[dict[str, Any]]) -> dict[str, Any]:
    """One small_cnn epoch at 128 px: the pipeline from the cache versus the original serial loader."""
    from fracture_lib.bench.loaders import naive_batches

    plan, img_size = context.plan, context.plan.sizes[0]
    cache = context.caches[img_size]
    steps = max(1, min(plan.epoch_images, len(cache.index)) // plan.batch_size)
    frame = cache.index.iloc[:steps * plan.batch_size]
    images, labels = np.asarray(cache.images[:len(frame)]), frame["label"].to_numpy(dtype=np.float32)
    model = compiled_model("small_cnn", img_size, context.seed)
    timer = EpochTimer()
    sources = {"pipeline": pipeline_data(images, labels, plan.batch_size, context.seed),
               "naive": naive_batches(context.paths(frame), labels, img_size, plan.batch_size, context.seed)}
    for data in sources.values():
        timer.fit(model, data, 2, plan.batch_size)
    runs: dict[str, list[Measurement]] = {name: [] for name in sources}
    for round_number in range(plan.epoch_rounds):
        # A-B-B-A order spreads drifting load from other processes evenly over both loaders.
        for name in (list(sources) if round_number % 2 == 0 else list(reversed(sources))):
            runs[name].extend(timer.fit(model, sources[name], steps, plan.batch_size))
    ours, naive = best(runs["pipeline"]), best(runs["naive"])
    loaders = next(item for item in throughput if item["img_size"] == img_size)["loaders"]
    result = {"arch": "small_cnn", "img_size": img_size, "images": len(frame), "batch_size": plan.batch_size,
              "naive_loader": "the original project's loader (serial)",
              "pipeline_seconds": round(ours.seconds, 2), "naive_seconds": round(naive.seconds, 2),
              "ratio": round(naive.seconds / ours.seconds, 2),
              "pipeline_runs_seconds": [round(run.seconds, 2) for run in runs["pipeline"]],
              "naive_runs_seconds": [round(run.seconds, 2) for run in runs["naive"]],
              # Wall milliseconds per image of each part of the work (see docs/benchmarks.md).
              "naive_load_ms_per_image": round(1000.0 / loaders["original_serial"]["images_per_second"], 3),
              "pipeline_ms_per_image": round(1000.0 / loaders["pipeline"]["images_per_second"], 3),
              "train_step_ms_per_image": round(1000.0 / efficiency["in_memory_images_per_second"], 3),
              "cache_build_ms_per_image": round(1000.0 / context.cache_build_rate, 3)}
    context.log(f"epoch small_cnn {img_size} px, {len(frame)} images: pipeline {result['pipeline_seconds']:.1f} s, "
                f"the original serial loader {result['naive_seconds']:.1f} s ({result['ratio']:.1f}x); per image: "
                f"serial decode+augment {result['naive_load_ms_per_image']:.2f} ms, pipeline "
                f"{result['pipeline_ms_per_image']:.3f} ms, train step {result['train_step_ms_per_image']:.2f} ms")
    return result


def bench_training(context: Context, efficiency: dict[str, Any]) -> list[dict[str, Any]]:
    """Training images/s on batches in memory: small_cnn at 128 and 224 px, densenet121 at 224 px."""
    plan = context.plan
    jobs = [("small_cnn", size, plan.batch_size, plan.train_steps) for size in plan.train_sizes]
    if plan.densenet_steps > 0:
        jobs.append(("densenet121", 224, plan.densenet_batch_size, plan.densenet_steps))
    results = []
    for arch, img_size, batch_size, steps in jobs:
        if arch == "small_cnn" and img_size == efficiency["img_size"] and batch_size == efficiency["batch_size"]:
            rate = efficiency["in_memory_images_per_second"]
            result = {"arch": arch, "img_size": img_size, "batch_size": batch_size, "images_per_second": rate,
                      "ms_per_image": round(1000.0 / rate, 2), "source": "pipeline-efficiency run (in memory, median)"}
        else:
            started = time.perf_counter()
            model = compiled_model(arch, img_size, context.seed)
            rng = np.random.default_rng(context.seed)
            images = rng.integers(0, 256, (4 * batch_size, img_size, img_size), dtype=np.uint8)
            labels = rng.integers(0, 2, 4 * batch_size).astype(np.float32)
            data = memory_data(images, labels, batch_size, context.seed, batches=4)
            timer = EpochTimer()
            timer.fit(model, data, 2, batch_size)
            setup = time.perf_counter() - started
            measurement = timer.fit(model, data, steps, batch_size)[0]
            result = {"arch": arch, "img_size": img_size, "batch_size": batch_size,
                      "images_per_second": round(measurement.rate, 2),
                      "ms_per_image": round(1000.0 / measurement.rate, 2), "timed_steps": steps,
                      "build_and_warm_up_seconds": round(setup, 1)}
        context.log(f"training {arch} {img_size} px (batch {batch_size}): {result['images_per_second']:.1f} images/s")
        results.append(result)
    if plan.densenet_steps <= 0:
        results.append({"arch": "densenet121", "img_size": 224, "skipped": "not measured with --quick"})
    return results


# ---------------------------------------------------------------------------------------------
# The worker's command line
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fracture_lib.bench.training efficiency-worker ...``: print one source's result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m fracture_lib.bench.training",
                                     description="Benchmark workers that must run in a fresh process.")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("efficiency-worker", help="train small_cnn fed by one source and time it")
    worker.add_argument("--source", choices=SOURCES, required=True)
    worker.add_argument("--images", required=True, help="uint8 (N, S, S) images saved with numpy.save")
    worker.add_argument("--labels", required=True, help="N labels saved with numpy.save")
    worker.add_argument("--batch-size", type=int, default=32)
    worker.add_argument("--steps", type=int, default=64, help="training steps per epoch")
    worker.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    worker.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    args = parser.parse_args(argv)
    try:
        # The pipeline reads a memory map as training does; the in-memory source loads the images into RAM.
        images = np.load(Path(args.images), mmap_mode="r" if args.source == "pipeline" else None)
        labels = np.load(Path(args.labels))
        result = efficiency_worker(images, labels, args.source, args.batch_size, args.steps, args.epochs, args.seed)
    except (FractureLibError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
