"""Speed benchmarks of the input pipeline and of training: ``python -m fracture_lib bench``.

Everything is measured side by side in one run, on the synthetic demo data (or any data root),
on whatever machine runs it; results go to ``reports/benchmarks.json`` (written atomically) and
are printed. docs/benchmarks.md explains each figure and records a run.

- **cache build**: images/s of ``preprocess.build_cache`` decoding and resizing into a fresh
  (temporary) cache, and the time to reuse it on a second call.
- **data-only throughput**: images/s that ``pipeline.make_dataset`` (cache + augmentation,
  batched) delivers with no model attached, at 128 and 320 px, beside a naive loader that
  decodes, resizes and augments every image every epoch in a Python generator, as the original
  project did. The naive loader uses the same OpenCV decoding and warp, so the difference is
  the work the cache saves, not slower code.
- **pipeline efficiency**: ``small_cnn`` training images/s fed by the real pipeline, divided by
  the same model's images/s on one batch already in memory (the model's own limit).
- **epoch time**: one ``small_cnn`` epoch at 128 px fed by the pipeline versus the naive loader,
  with the per-image decode, augmentation and train-step costs that explain the ratio.
- **training speed**: images/s of ``small_cnn`` at 128 and 224 px and ``densenet121`` at 224 px.
- **scoring**: single-image latency p50/p95 (file to probability) and batch throughput of a
  trained ``small_cnn`` elbow model at 128 px, as ``python -m fracture_lib predict`` scores.

Rates are the best of a few timed passes, the usual way to keep other processes on a shared
machine out of a speed measurement; the CPU time per image (all threads of this process) is
reported beside the wall-clock rates because it hardly depends on that load.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from fracture_lib import config
from fracture_lib.errors import ParameterError
from fracture_lib.files import write_text_atomically


@dataclass(frozen=True)
class BenchPlan:
    """How much work each benchmark does (the full run, or the ``--quick`` smoke test)."""

    cache_images: int = 0            # images decoded by the 128 px cache build (0: every image)
    throughput_images: int = 1024    # images per pass of the data-only measurement (also the 320 px cache)
    throughput_passes: int = 3       # timed passes of the data-only measurement
    naive_images: int = 192          # images per pass of the naive loader
    batch_size: int = 32
    efficiency_steps: int = 4        # training steps per timed block (efficiency)
    efficiency_rounds: int = 15      # alternating (in memory, pipeline) blocks
    epoch_rounds: int = 2            # alternating (pipeline, naive) end-to-end epochs
    epoch_images: int = 640          # images in the end-to-end epoch
    train_steps: int = 6             # timed steps of the training-speed measurements
    densenet_steps: int = 2          # timed steps of densenet121 (0: skipped)
    densenet_batch_size: int = 8
    sizes: tuple[int, ...] = (128, 320)
    train_sizes: tuple[int, ...] = (128, 224)
    latency_images: int = 20         # distinct test images cycled through by the latency measurement
    latency_repeats: int = 100       # single-image scoring calls timed


FULL_PLAN = BenchPlan()
QUICK_PLAN = BenchPlan(cache_images=256, throughput_images=256, throughput_passes=2, naive_images=48,
                       efficiency_steps=3, efficiency_rounds=4, epoch_rounds=1, epoch_images=128, train_steps=3,
                       densenet_steps=0, latency_repeats=20)


@dataclass
class Measurement:
    """Wall-clock and CPU seconds of a piece of work on ``items`` images."""

    items: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Images per second (wall clock)."""
        return self.items / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_ms_per_item(self) -> float:
        """CPU milliseconds (all threads) per image."""
        return 1000.0 * self.cpu_seconds / self.items if self.items else float("nan")


def _measure(work: Callable[[], int]) -> Measurement:
    """Run ``work`` (which returns how many images it handled) and time it."""
    wall, cpu = time.perf_counter(), time.process_time()
    items = work()
    return Measurement(items, time.perf_counter() - wall, time.process_time() - cpu)


def _best(measurements: list[Measurement]) -> Measurement:
    """The fastest of several timed passes."""
    return max(measurements, key=lambda measurement: measurement.rate)


def _summary(measurements: list[Measurement]) -> dict[str, Any]:
    """Best and median rate, and the best pass's CPU cost, of several passes."""
    best = _best(measurements)
    return {"images_per_second": round(best.rate, 1),
            "median_images_per_second": round(statistics.median(m.rate for m in measurements), 1),
            "cpu_ms_per_image": round(best.cpu_ms_per_item, 4),
            "passes": [round(m.rate, 1) for m in measurements]}


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def naive_batches(paths: list[Path], labels: np.ndarray, img_size: int, batch_size: int = 32,
                  seed: int = config.DEFAULT_SEED, epochs: int | None = None) -> Iterator[tuple[np.ndarray, ...]]:
    """The original project's loader: decode, resize and augment every image every epoch in Python.

    Yields ``(images float32 (B, S, S, 1), labels, sample weights)`` in a new random order each
    epoch, forever when ``epochs`` is None. It calls the same functions as the cache and the
    pipeline (OpenCV decoding, one affine warp per image), so only the repeated work differs.
    """
    from fracture_lib.pipeline import AugmentSettings, augment_images
    from fracture_lib.preprocess import PreprocessSettings, load_and_preprocess

    settings, augment = PreprocessSettings(img_size=img_size), AugmentSettings()
    rng = np.random.default_rng(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = rng.permutation(len(paths))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            images = np.stack([load_and_preprocess(paths[row], settings) for row in rows])
            images = np.stack([augment_images(image[np.newaxis], rng.integers(2**62), augment)[0] for image in images])
            yield images[..., np.newaxis], labels[rows], np.ones(len(rows), dtype=np.float32)
        epoch += 1


def _count_images(batches: Any) -> int:
    """Consume an iterable of batches and return how many images it held."""
    return sum(int(batch[0].shape[0]) for batch in batches)


def pipeline_throughput(images: np.ndarray, batch_size: int = 32, passes: int = 2,
                        seed: int = config.DEFAULT_SEED) -> list[Measurement]:
    """Time ``passes`` epochs of the augmented training pipeline over cached ``images`` (no model).

    One untimed epoch comes first, so thread start-up is not counted.
    """
    from fracture_lib.pipeline import AugmentSettings, make_dataset

    labels = np.zeros(len(images), dtype=np.float32)
    dataset = make_dataset(images, labels, batch_size, training=True, augment=AugmentSettings(), seed=seed)
    _count_images(dataset)
    return [_measure(lambda: _count_images(dataset)) for _ in range(passes)]


def naive_throughput(paths: list[Path], img_size: int, batch_size: int = 32, passes: int = 1,
                     seed: int = config.DEFAULT_SEED) -> list[Measurement]:
    """Time ``passes`` epochs of the naive loader (decode, resize, augment every image) over ``paths``."""
    labels = np.zeros(len(paths), dtype=np.float32)
    return [_measure(lambda: _count_images(naive_batches(paths, labels, img_size, batch_size, seed, epochs=1)))
            for _ in range(passes)]


def throughput_row(loader: str, measurements: list[Measurement]) -> dict[str, Any]:
    """One table row (``loader``, images, best images/s, CPU ms per image) of timed passes."""
    best = _best(measurements)
    return {"loader": loader, "images": best.items, "seconds": round(best.seconds, 3),
            "images_per_second": round(best.rate, 1), "cpu_ms_per_image": round(best.cpu_ms_per_item, 3)}


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class _EpochTimer:
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

    def fit(self, model: Any, data: Any, steps: int, batch_size: int) -> Measurement:
        """Train ``model`` for one epoch of ``steps`` steps and return the epoch's timing."""
        model.fit(data, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0, callbacks=[self.callback])
        seconds, cpu_seconds = self.epochs[-1]
        return Measurement(steps * batch_size, seconds, cpu_seconds)


def _compiled_model(arch: str, img_size: int, seed: int) -> Any:
    """A freshly built model compiled as ``train`` compiles a fracture model."""
    import keras

    from fracture_lib.models import build_model

    model = build_model(arch, img_size, weights=None, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss=keras.losses.BinaryCrossentropy(),
                  weighted_metrics=[], metrics=[keras.metrics.AUC(name="auroc")])
    return model


def _in_memory_data(images: np.ndarray, labels: np.ndarray, batch_size: int, batches: int = 16) -> Any:
    """Augmented batches already held as tensors in memory, cycled forever: the model's own limit.

    Several different batches, not one: a model trained on one batch over and over fits it
    almost perfectly, and the tiny gradients that follow run measurably slower on a CPU.
    """
    import tensorflow as tf

    from fracture_lib.pipeline import AugmentSettings, augment_images

    batches = max(1, min(batches, len(images) // batch_size))
    rows = np.arange(batches * batch_size) % len(images)
    augmented = augment_images(images, 0, AugmentSettings(), rows=rows)[..., np.newaxis]
    shape = (batches, batch_size)
    tensors = (tf.constant(augmented.reshape(*shape, *augmented.shape[1:])),
               tf.constant(labels[rows].reshape(shape)), tf.ones(shape, tf.float32))
    return tf.data.Dataset.from_tensor_slices(tensors).repeat()


def _pipeline_data(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int) -> Any:
    """The real training pipeline (shuffle, augmentation, batches, prefetch), repeated forever."""
    from fracture_lib.pipeline import AugmentSettings, make_dataset

    weights = np.ones(len(images), dtype=np.float32)
    return make_dataset(images, labels, batch_size, training=True, augment=AugmentSettings(), seed=seed,
                        sample_weights=weights).repeat()


# ---------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """What every benchmark needs: the data, the plan, a temporary cache folder and a log."""

    data_root: Path
    index: Any
    plan: BenchPlan
    cache_dir: Path
    seed: int
    log: Callable[[str], None]
    caches: dict[int, Any] = field(default_factory=dict)
    cache_build_rate: float = math.nan

    def sample(self, count: int) -> Any:
        """A seeded sample of ``count`` index rows (all rows when ``count`` is 0 or too large)."""
        if count <= 0 or count >= len(self.index):
            return self.index
        return self.index.sample(count, random_state=self.seed).sort_values("path").reset_index(drop=True)

    def paths(self, frame: Any) -> list[Path]:
        """Absolute image paths of index rows."""
        return [self.data_root / path for path in frame["path"]]


def bench_cache(context: _Context) -> list[dict[str, Any]]:
    """Build the 128 px cache of every image (and a 320 px one for the throughput test); time reuse."""
    from fracture_lib.preprocess import PreprocessSettings, build_cache

    results = []
    for img_size in context.plan.sizes:
        count = context.plan.cache_images if img_size == context.plan.sizes[0] else context.plan.throughput_images
        frame = context.sample(count)
        settings = PreprocessSettings(img_size=img_size)
        cache = build_cache(frame, context.data_root, settings, cache_dir=context.cache_dir, progress=False)
        reuse = build_cache(frame, context.data_root, settings, cache_dir=context.cache_dir, progress=False)
        context.caches[img_size] = reuse
        result = {"img_size": img_size, "images": len(frame), "workers": os.cpu_count(),
                  "build_seconds": round(cache.build_seconds, 2), "images_per_second": round(cache.images_per_second, 1),
                  "reuse_seconds": round(reuse.load_seconds, 3), "reused": reuse.reused,
                  "size_mb": round(cache.size_bytes / 1e6, 2)}
        context.log(f"cache build {img_size:>3} px: {result['images']} images in {result['build_seconds']:.1f} s "
                    f"({result['images_per_second']:.0f} images/s, {result['size_mb']:.1f} MB); "
                    f"second call reuses it in {result['reuse_seconds']:.2f} s")
        results.append(result)
    return results


def bench_data_throughput(context: _Context) -> list[dict[str, Any]]:
    """Images/s delivered with no model: the pipeline from the cache versus the naive loader."""
    plan, results = context.plan, []
    for img_size in plan.sizes:
        cache = context.caches[img_size]
        images = np.asarray(cache.images[:plan.throughput_images])
        ours = pipeline_throughput(images, plan.batch_size, plan.throughput_passes, context.seed)
        paths = context.paths(cache.index.iloc[:plan.naive_images])
        naive = naive_throughput(paths, img_size, plan.batch_size, passes=2, seed=context.seed)
        result = {"img_size": img_size, "batch_size": plan.batch_size, "images": len(images),
                  "pipeline": _summary(ours), "naive": _summary(naive),
                  "speedup": round(_best(ours).rate / _best(naive).rate, 1),
                  # What two otherwise idle cores would sustain at the measured CPU cost per image.
                  "pipeline_two_core_capacity": round(2000.0 / _best(ours).cpu_ms_per_item, 0)}
        context.log(f"data only {img_size:>3} px: pipeline {result['pipeline']['images_per_second']:.0f} images/s "
                    f"({result['pipeline']['cpu_ms_per_image']:.3f} CPU ms/image), naive loader "
                    f"{result['naive']['images_per_second']:.0f} images/s "
                    f"({result['naive']['cpu_ms_per_image']:.2f} CPU ms/image): {result['speedup']:.1f}x")
        results.append(result)
    return results


def _train_block(model: Any, batches: Iterator[Any], steps: int, batch_size: int) -> Measurement:
    """Time ``steps`` training steps of ``model`` on the next batches of a live iterator."""
    def work() -> int:
        for _ in range(steps):
            images, labels, weights = next(batches)
            model.train_on_batch(images, labels, sample_weight=weights)
        return steps * batch_size

    return _measure(work)


def bench_efficiency(context: _Context) -> dict[str, Any]:
    """small_cnn images/s fed by the pipeline divided by its images/s on a batch held in memory.

    Short blocks of training steps alternate between the two sources in A-B-B-A order, each
    drawing from one live iterator (so no start-up is timed): load from other processes drifts
    over seconds, and interleaving spreads it evenly over both. The efficiency is the ratio of
    the two total rates; the spread of the per-pair ratios shows how noisy the machine was, and
    the CPU-time ratio is the estimate that load hardly affects.
    """
    plan, img_size = context.plan, context.plan.sizes[0]
    cache = context.caches[img_size]
    images, labels = np.asarray(cache.images), cache.index["label"].to_numpy(dtype=np.float32)
    model = _compiled_model("small_cnn", img_size, context.seed)
    sources = {"in_memory": iter(_in_memory_data(images, labels, plan.batch_size)),
               "pipeline": iter(_pipeline_data(images, labels, plan.batch_size, context.seed))}
    # A few untimed steps on each source build the training function and start the threads.
    for batches in sources.values():
        _train_block(model, batches, 3, plan.batch_size)
    runs: dict[str, list[Measurement]] = {name: [] for name in sources}
    for round_number in range(plan.efficiency_rounds):
        order = list(sources) if round_number % 2 == 0 else list(reversed(sources))
        for name in order:
            runs[name].append(_train_block(model, sources[name], plan.efficiency_steps, plan.batch_size))
    paired = [ours.rate / memory.rate for memory, ours in zip(runs["in_memory"], runs["pipeline"])]
    quartiles = np.percentile(paired, [25, 50, 75])
    total = {name: Measurement(sum(m.items for m in measured), sum(m.seconds for m in measured),
                               sum(m.cpu_seconds for m in measured)) for name, measured in runs.items()}
    result = {"arch": "small_cnn", "img_size": img_size, "batch_size": plan.batch_size,
              "steps_per_block": plan.efficiency_steps, "rounds": plan.efficiency_rounds,
              "in_memory_images_per_second": round(total["in_memory"].rate, 1),
              "pipeline_images_per_second": round(total["pipeline"].rate, 1),
              "in_memory": _summary(runs["in_memory"]), "pipeline": _summary(runs["pipeline"]),
              "efficiency": round(total["pipeline"].rate / total["in_memory"].rate, 3),
              "pair_ratio_quartiles": [round(float(value), 3) for value in quartiles],
              "efficiency_per_round": [round(value, 3) for value in paired],
              # CPU time per image hardly depends on other processes: the CPU-bound estimate.
              "cpu_efficiency": round(total["in_memory"].cpu_ms_per_item / total["pipeline"].cpu_ms_per_item, 3)}
    context.log(f"efficiency small_cnn {img_size} px: {total['pipeline'].rate:.0f} images/s with the pipeline / "
                f"{total['in_memory'].rate:.0f} in memory = {result['efficiency']:.3f} (pairs' quartiles "
                f"{', '.join(f'{value:.2f}' for value in quartiles)}); CPU time per image ratio {result['cpu_efficiency']:.3f}")
    return result


def bench_epoch(context: _Context, efficiency: dict[str, Any], throughput: list[dict[str, Any]]) -> dict[str, Any]:
    """One small_cnn epoch at 128 px: the pipeline from the cache versus the naive loader."""
    plan, img_size = context.plan, context.plan.sizes[0]
    cache = context.caches[img_size]
    steps = max(1, min(plan.epoch_images, len(cache.index)) // plan.batch_size)
    frame = cache.index.iloc[:steps * plan.batch_size]
    images, labels = np.asarray(cache.images[:len(frame)]), frame["label"].to_numpy(dtype=np.float32)
    model = _compiled_model("small_cnn", img_size, context.seed)
    timer = _EpochTimer()
    ours_data = _pipeline_data(images, labels, plan.batch_size, context.seed)
    naive_data = naive_batches(context.paths(frame), labels, img_size, plan.batch_size, context.seed)
    timer.fit(model, ours_data, 2, plan.batch_size)
    timer.fit(model, naive_data, 2, plan.batch_size)
    runs: dict[str, list[Measurement]] = {"pipeline": [], "naive": []}
    sources = {"pipeline": ours_data, "naive": naive_data}
    for round_number in range(plan.epoch_rounds):
        # A-B-B-A order spreads drifting load from other processes evenly over both loaders.
        for name in (list(sources) if round_number % 2 == 0 else list(reversed(sources))):
            runs[name].append(timer.fit(model, sources[name], steps, plan.batch_size))
    ours_runs, naive_runs = runs["pipeline"], runs["naive"]
    ours, naive = _best(ours_runs), _best(naive_runs)
    naive_throughput = next(item for item in throughput if item["img_size"] == img_size)["naive"]
    pipeline_throughput = next(item for item in throughput if item["img_size"] == img_size)["pipeline"]
    result = {"arch": "small_cnn", "img_size": img_size, "images": len(frame), "batch_size": plan.batch_size,
              "pipeline_seconds": round(ours.seconds, 2), "naive_seconds": round(naive.seconds, 2),
              "ratio": round(naive.seconds / ours.seconds, 2),
              "pipeline_runs_seconds": [round(run.seconds, 2) for run in ours_runs],
              "naive_runs_seconds": [round(run.seconds, 2) for run in naive_runs],
              # Wall milliseconds per image of each part of the work (see docs/benchmarks.md).
              "naive_load_ms_per_image": round(1000.0 / naive_throughput["images_per_second"], 3),
              "pipeline_ms_per_image": round(1000.0 / pipeline_throughput["images_per_second"], 3),
              "train_step_ms_per_image": round(1000.0 / efficiency["in_memory_images_per_second"], 3),
              "cache_build_ms_per_image": round(1000.0 / context.cache_build_rate, 3)}
    context.log(f"epoch small_cnn {img_size} px, {len(frame)} images: pipeline {result['pipeline_seconds']:.1f} s, "
                f"naive {result['naive_seconds']:.1f} s ({result['ratio']:.1f}x); per image: naive decode+augment "
                f"{result['naive_load_ms_per_image']:.2f} ms, pipeline {result['pipeline_ms_per_image']:.3f} ms, "
                f"train step {result['train_step_ms_per_image']:.2f} ms")
    return result


def bench_training(context: _Context, efficiency: dict[str, Any]) -> list[dict[str, Any]]:
    """Training images/s on a batch in memory: small_cnn at 128 and 224 px, densenet121 at 224 px."""
    plan = context.plan
    jobs = [("small_cnn", size, plan.batch_size, plan.train_steps) for size in plan.train_sizes]
    if plan.densenet_steps > 0:
        jobs.append(("densenet121", 224, plan.densenet_batch_size, plan.densenet_steps))
    results = []
    for arch, img_size, batch_size, steps in jobs:
        if arch == "small_cnn" and img_size == efficiency["img_size"] and batch_size == efficiency["batch_size"]:
            rate = efficiency["in_memory_images_per_second"]
            result = {"arch": arch, "img_size": img_size, "batch_size": batch_size, "images_per_second": rate,
                      "ms_per_image": round(1000.0 / rate, 2), "source": "pipeline-efficiency run"}
        else:
            started = time.perf_counter()
            model = _compiled_model(arch, img_size, context.seed)
            rng = np.random.default_rng(context.seed)
            images = rng.integers(0, 256, (4 * batch_size, img_size, img_size), dtype=np.uint8)
            labels = rng.integers(0, 2, 4 * batch_size).astype(np.float32)
            data = _in_memory_data(images, labels, batch_size, batches=4)
            timer = _EpochTimer()
            timer.fit(model, data, 2, batch_size)
            setup = time.perf_counter() - started
            measurement = timer.fit(model, data, steps, batch_size)
            result = {"arch": arch, "img_size": img_size, "batch_size": batch_size,
                      "images_per_second": round(measurement.rate, 2),
                      "ms_per_image": round(1000.0 / measurement.rate, 2), "timed_steps": steps,
                      "build_and_warm_up_seconds": round(setup, 1)}
        context.log(f"training {arch} {img_size} px (batch {batch_size}): {result['images_per_second']:.1f} images/s")
        results.append(result)
    if plan.densenet_steps <= 0:
        results.append({"arch": "densenet121", "img_size": 224, "skipped": "not measured with --quick"})
    return results


def benchmark_latency(run: Any, image_paths: Sequence[str | os.PathLike[str]], repeats: int = 50,
                      batch_size: int = 32, warmup: int = 3) -> dict[str, Any]:
    """Measure scoring speed of one loaded run (``runs.LoadedRun`` or a run folder).

    Returns single-image latency from file (decode, preprocess, forward) and of the forward pass
    alone, as p50/p95 in milliseconds over ``repeats`` calls cycling through ``image_paths``, and
    batch throughput in images/s (forward only on preprocessed images, and end to end from
    files) with batches of ``batch_size``.
    """
    if repeats < 1 or batch_size < 1 or not image_paths:
        raise ParameterError("benchmark_latency needs repeats >= 1, batch_size >= 1 and at least one image")
    from fracture_lib.predict import ScoringModel
    from fracture_lib.runs import load_run

    if isinstance(run, (str, os.PathLike)):
        run = load_run(Path(run))
    model = ScoringModel(run)
    paths = [Path(path) for path in image_paths]
    images = np.stack([model.preprocess(path) for path in paths])
    for index in range(warmup):
        model.scores(images[index % len(images)][np.newaxis])

    end_to_end, forward_only = [], []
    for index in range(repeats):
        path = paths[index % len(paths)]
        start = time.perf_counter()
        model.scores(model.preprocess(path)[np.newaxis])
        end_to_end.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.scores(images[index % len(images)][np.newaxis])
        forward_only.append(time.perf_counter() - start)

    batch = images[np.arange(batch_size) % len(images)]
    model.scores(batch)
    batch_rounds = max(3, repeats // 10)
    start = time.perf_counter()
    for _ in range(batch_rounds):
        model.scores(batch)
    forward_throughput = batch_rounds * batch_size / (time.perf_counter() - start)
    batch_paths = [paths[index % len(paths)] for index in range(batch_size)]
    start = time.perf_counter()
    for _ in range(batch_rounds):
        model.scores(np.stack([model.preprocess(path) for path in batch_paths]))
    file_throughput = batch_rounds * batch_size / (time.perf_counter() - start)

    def percentile(values: list[float], q: float) -> float:
        return float(np.percentile(np.asarray(values) * 1000.0, q))

    return {
        "run_dir": str(run.run_dir),
        "arch": run.config.get("arch"),
        "img_size": model.img_size,
        "repeats": repeats,
        "single_image_ms_p50": percentile(end_to_end, 50),
        "single_image_ms_p95": percentile(end_to_end, 95),
        "forward_ms_p50": percentile(forward_only, 50),
        "forward_ms_p95": percentile(forward_only, 95),
        "batch_size": batch_size,
        "batch_images_per_s": float(forward_throughput),
        "batch_from_files_images_per_s": float(file_throughput),
    }


def bench_prediction(context: _Context) -> dict[str, Any]:
    """Single-image scoring latency (p50/p95) and batch throughput of a trained elbow model.

    The model is a one-epoch ``small_cnn`` run at 128 px (the default size) trained into a
    temporary models folder: speed does not depend on how well it was trained.
    """
    from fracture_lib.runs import load_run
    from fracture_lib.train import TrainConfig, train_model

    plan = context.plan
    models_dir = context.cache_dir / "models"
    train_config = TrainConfig(body_part="elbow", img_size=128, epochs=1, run_name="bench", seed=context.seed,
                               data_dir=str(context.data_root))
    result = train_model(train_config, models_dir=models_dir, verbose=0)
    elbow_tests = context.index[(context.index["body_part"] == "elbow") & (context.index["split"] == "test")]
    paths = context.paths(elbow_tests.head(plan.latency_images))
    latency = benchmark_latency(load_run(result.run_dir), paths, repeats=plan.latency_repeats,
                                batch_size=plan.batch_size)
    latency = {key: (round(value, 2) if isinstance(value, float) else value)
               for key, value in latency.items() if key != "run_dir"}
    context.log(f"scoring one image at 128 px: p50 {latency['single_image_ms_p50']:.1f} ms, "
                f"p95 {latency['single_image_ms_p95']:.1f} ms (decode + preprocess + forward); "
                f"batches of {plan.batch_size}: {latency['batch_images_per_s']:.0f} images/s forward, "
                f"{latency['batch_from_files_images_per_s']:.0f} images/s from files")
    return latency


def _machine() -> dict[str, Any]:
    """The machine and library versions the figures were measured with (as a training run records them)."""
    from fracture_lib.train import library_versions

    return {**library_versions(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_before": [round(value, 2) for value in os.getloadavg()]}


def _targets(results: dict[str, Any]) -> dict[str, Any]:
    """Compare the figures with the targets of the issue."""
    by_size = {item["img_size"]: item for item in results["data_throughput"]}
    largest = by_size[max(by_size)]
    checks = {
        "pipeline_efficiency_at_least_0.95": results["pipeline_efficiency"]["efficiency"] >= 0.95,
        "pipeline_cpu_efficiency_at_least_0.95": results["pipeline_efficiency"]["cpu_efficiency"] >= 0.95,
        "data_speedup_at_least_5x": all(item["speedup"] >= 5 for item in by_size.values()),
        f"at_least_1000_images_per_second_at_{max(by_size)}px":
            largest["pipeline"]["images_per_second"] >= 1000,
        "single_image_p50_under_100_ms": results["prediction"]["single_image_ms_p50"] < 100,
    }
    return {name: bool(value) for name, value in checks.items()}


def write_results(results: dict[str, Any], out_path: str | os.PathLike[str]) -> Path:
    """Write the results as JSON: a temporary file in the same folder, renamed when complete."""
    return write_text_atomically(out_path, json.dumps(results, indent=2, allow_nan=False, default=_json_default))


def _json_default(value: Any) -> Any:
    """JSON for NumPy scalars and paths."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return str(value)


def run_benchmarks(out_path: str | os.PathLike[str] | None = None, quick: bool = False,
                   data_dir: str | os.PathLike[str] | None = None, seed: int = config.DEFAULT_SEED,
                   log: Callable[[str], None] = print, plan: BenchPlan | None = None) -> dict[str, Any]:
    """Run every benchmark, write ``out_path`` (default ``reports/benchmarks.json``) and return the results.

    ``data_dir=None`` uses the synthetic demo set (generated when missing); ``quick`` runs the
    small plan (about a minute) instead of the full one (about five on two free cores); ``plan``
    replaces both (the tests use a tiny one).
    """
    import keras

    from fracture_lib import datasets, synthetic

    started = time.perf_counter()
    if data_dir is None:
        source = datasets.resolve_source(synthetic.ensure_demo_dataset(config.DEMO_DATA_ROOT))
    else:
        source = datasets.resolve_source(data_dir)
    data_root = source.root
    index = datasets.build_index(source, seed=seed)
    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    if len(index) < plan.batch_size:
        raise ParameterError(f"{data_root} has only {len(index)} images: the benchmark needs at least {plan.batch_size}")
    keras.utils.set_random_seed(seed)
    results: dict[str, Any] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": quick,
                               "plan": asdict(plan), "machine": _machine(),
                               "data": {"data_root": str(data_root), "source": source.kind, "synthetic": source.synthetic,
                                        "images": len(index)}}
    log(f"benchmarking on {data_root} ({len(index)} images, {'synthetic' if results['data']['synthetic'] else 'real'}"
        f"{', quick plan' if quick else ''}); load average {results['machine']['load_average_before']}")
    with tempfile.TemporaryDirectory(prefix="fracture-bench-cache-") as cache_dir:
        context = _Context(data_root, index, plan, Path(cache_dir), seed, log)
        results["cache_build"] = bench_cache(context)
        context.cache_build_rate = results["cache_build"][0]["images_per_second"]
        results["data_throughput"] = bench_data_throughput(context)
        results["pipeline_efficiency"] = bench_efficiency(context)
        results["epoch_time"] = bench_epoch(context, results["pipeline_efficiency"], results["data_throughput"])
        results["training"] = bench_training(context, results["pipeline_efficiency"])
        results["prediction"] = bench_prediction(context)
    results["targets"] = _targets(results)
    results["machine"]["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    results["seconds"] = round(time.perf_counter() - started, 1)
    target = write_results(results, out_path or config.REPORTS_DIR / "benchmarks.json")
    passed = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in results["targets"].items())
    log(f"targets: {passed}")
    log(f"benchmarks took {results['seconds']:.0f} s; written to {target}")
    return results
