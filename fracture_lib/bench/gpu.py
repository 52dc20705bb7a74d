"""GPU training benchmark: ``python -m fracture_lib bench --gpu`` (``make bench-gpu``).

DenseNet-169 at 320 px from random initialisation (``weights=None``), batch 32, on a data root
(default the demo set): training images/s in a grid of cells, precision (float32, mixed_float16)
x feeding (the real pipeline from the cache, or augmented tensors already in memory) x XLA (off,
on, ``model.compile(jit_compile=...)``). Beside the rates: the pipeline's efficiency (pipeline
over memory) and the mixed-precision speed-up for each pair of cells, the time to build the cache
of the images used, the peak GPU memory of each cell (``tf.config.experimental.get_memory_info``,
reset between cells) and the device's name.

Each cell trains one untimed epoch of ``steps`` steps (building and compiling the training
function, starting the pipeline's threads) and then one timed epoch of as many; one model per
(precision, XLA) pair serves both feedings, whose element structures match, so it is compiled
once. A time budget (``max_seconds``, default 7 minutes, counted from the start) lets a cell start
only while the longest cell so far (model building and compiling included) would still end inside
it; the cells left out are recorded as skipped and logged. It is sized for the whole run to end
within 8 minutes on one GPU (not yet measured on one).

Without a GPU it stops with one line (``NoGpuError``) unless ``allow_cpu``; the tests run the
grid on the CPU with a tiny model (``--arch small_cnn --img-size 32 --steps 2``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from fracture_lib import config
from fracture_lib.errors import FractureLibError, ParameterError

PRECISIONS = ("float32", "mixed_float16")
FEEDINGS = ("pipeline", "memory")
# (precision, XLA) pairs in the order they run: the plain cells first, so a spent budget skips XLA.
MODEL_ORDER = (("float32", False), ("mixed_float16", False), ("float32", True), ("mixed_float16", True))
GPU_DEVICE = "GPU:0"


class NoGpuError(FractureLibError):
    """``bench --gpu`` was asked for on a machine where TensorFlow sees no GPU."""


@dataclass(frozen=True)
class GpuPlan:
    """What the GPU benchmark trains and for how long."""

    arch: str = "densenet169"
    img_size: int = 320
    batch_size: int = 32
    steps: int = 50              # timed steps per cell (an untimed epoch of as many comes first)
    images: int = 1024           # images cached and fed by the pipeline (rounded down to whole batches)
    memory_batches: int = 8      # distinct augmented batches held in memory
    max_seconds: float = 420.0   # the time budget: cells that would end after it are skipped

    def __post_init__(self) -> None:
        from fracture_lib.models import ARCHITECTURES, check_architecture

        if self.arch not in ARCHITECTURES:
            raise ParameterError(f"arch={self.arch!r}: choose from {', '.join(ARCHITECTURES)}")
        for name in ("img_size", "batch_size", "steps", "images", "memory_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ParameterError(f"{name}={value!r} must be a positive integer")
        check_architecture(self.arch, self.img_size)
        if self.images < self.batch_size:
            raise ParameterError(f"images={self.images} must be at least batch_size={self.batch_size}")
        if isinstance(self.max_seconds, bool) or not isinstance(self.max_seconds, (int, float)) or self.max_seconds <= 0:
            raise ParameterError(f"max_seconds={self.max_seconds!r} must be a positive number of seconds")


def gpu_devices() -> list[Any]:
    """The GPUs TensorFlow can see."""
    import tensorflow as tf

    return list(tf.config.list_physical_devices("GPU"))


def _device_description(gpus: list[Any]) -> dict[str, Any]:
    """The device the cells run on: the first GPU's name and compute capability, or the CPU."""
    import tensorflow as tf

    if not gpus:
        return {"kind": "CPU", "name": platform.processor() or platform.machine(), "gpu_count": 0,
                "cpu_count": os.cpu_count(), "built_with_cuda": tf.test.is_built_with_cuda()}
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = details.get("compute_capability")
    return {"kind": "GPU", "name": details.get("device_name", gpus[0].name), "gpu_count": len(gpus),
            "compute_capability": ".".join(str(part) for part in capability) if capability else None,
            "cpu_count": os.cpu_count(), "built_with_cuda": tf.test.is_built_with_cuda()}


def benchmark_model(arch: str, img_size: int, precision: str, jit_compile: bool, seed: int) -> tuple[Any, dict[str, Any]]:
    """A fresh model (random initialisation) under ``precision``, compiled as training compiles it.

    The model is built under ``distribute.precision_policy``, as ``train`` builds it:
    ``models.build_model`` keeps the output layer in float32 (the facts record its dtype), and
    Keras wraps the optimizer in a ``LossScaleOptimizer`` itself for a ``mixed_float16`` model.
    Also returned: what ``jit_compile="auto"`` (Keras's own default) resolves to for this model.
    """
    import keras

    from fracture_lib.distribute import precision_policy
    from fracture_lib.models import build_model

    with precision_policy(precision):
        model = build_model(arch, img_size, weights=None, seed=seed)

    def compile_model(setting: bool | str) -> None:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss=keras.losses.BinaryCrossentropy(),
                      weighted_metrics=[], metrics=[keras.metrics.AUC(name="auroc")], jit_compile=setting)

    compile_model("auto")
    auto = bool(model.jit_compile)
    compile_model(jit_compile)
    facts = {"output_dtype": str(model.output.dtype), "optimizer": type(model.optimizer).__name__,
             "jit_compile_auto_resolves_to": auto, "parameters": int(model.count_params())}
    return model, facts


def _reset_peak_memory(on_gpu: bool) -> None:
    """Start a new peak-memory measurement on the GPU."""
    if on_gpu:
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats(GPU_DEVICE)


def _peak_memory_mb(on_gpu: bool) -> float | None:
    """The GPU's peak memory in use since the last reset, in MB (None without a GPU)."""
    if not on_gpu:
        return None
    import tensorflow as tf

    return round(tf.config.experimental.get_memory_info(GPU_DEVICE)["peak"] / 1e6, 1)


def _over_budget(started: float, longest: float, plan: GpuPlan) -> str | None:
    """Why the next cell is skipped (it would end past the time budget), or None to run it."""
    elapsed = time.perf_counter() - started
    if elapsed + longest <= plan.max_seconds:
        return None
    return f"time budget: {elapsed:.0f} s spent of {plan.max_seconds:.0f} s, the longest cell took {longest:.0f} s"


def _measure_cell(model: Any, feed: Any, plan: GpuPlan, on_gpu: bool, precision: str, xla: bool,
                  feeding: str) -> dict[str, Any]:
    """Train one untimed and one timed epoch of ``plan.steps`` steps; the timed epoch's figures."""
    from fracture_lib.bench.training import EpochTimer

    _reset_peak_memory(on_gpu)
    warm_up, timed = EpochTimer().fit(model, feed, plan.steps, plan.batch_size, epochs=2)
    return {"precision": precision, "xla": xla, "feeding": feeding, "images_per_second": round(timed.rate, 1),
            "ms_per_step": round(1000.0 * timed.seconds / plan.steps, 2), "timed_steps": plan.steps,
            "warm_up_steps": plan.steps, "warm_up_seconds": round(warm_up.seconds, 2),
            "cpu_ms_per_image": round(timed.cpu_ms_per_item, 3), "peak_gpu_memory_mb": _peak_memory_mb(on_gpu)}


def _cell_line(cell: dict[str, Any], on_gpu: bool) -> str:
    """One cell's log line."""
    memory = f"{cell['peak_gpu_memory_mb']:.0f} MB" if on_gpu else "n/a (no GPU)"
    return (f"{cell['precision']:>13}{' + XLA' if cell['xla'] else '      '} fed by {cell['feeding']:>8}: "
            f"{cell['images_per_second']:.1f} images/s ({cell['ms_per_step']:.1f} ms/step), peak GPU memory "
            f"{memory}; warm-up epoch {cell['warm_up_seconds']:.1f} s")


def _skipped(precision: str, xla: bool, feeding: str, reason: str) -> dict[str, Any]:
    """The record of a cell the time budget left out."""
    return {"precision": precision, "xla": xla, "feeding": feeding, "skipped": reason}


def _comparisons(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Pipeline efficiency of each (precision, XLA) pair, and mixed over float32 for each (feeding, XLA)."""
    rates = {(cell["precision"], cell["xla"], cell["feeding"]): cell["images_per_second"]
             for cell in cells if "images_per_second" in cell}

    def ratio(numerator: tuple, denominator: tuple) -> float | None:
        if numerator in rates and denominator in rates and rates[denominator] > 0:
            return round(rates[numerator] / rates[denominator], 3)
        return None

    efficiency = {f"{precision}{', xla' if xla else ''}": ratio((precision, xla, "pipeline"), (precision, xla, "memory"))
                  for precision, xla in MODEL_ORDER}
    speedup = {f"{feeding}{', xla' if xla else ''}": ratio(("mixed_float16", xla, feeding), ("float32", xla, feeding))
               for xla in (False, True) for feeding in FEEDINGS}
    xla_speedup = {f"{precision}, {feeding}": ratio((precision, True, feeding), (precision, False, feeding))
                   for precision in PRECISIONS for feeding in FEEDINGS}
    return {"pipeline_efficiency": efficiency, "mixed_precision_speedup": speedup, "xla_speedup": xla_speedup}


def run_gpu_benchmarks(out_path: str | os.PathLike[str] | None = None, data_dir: str | os.PathLike[str] | None = None,
                       plan: GpuPlan | None = None, allow_cpu: bool = False, seed: int = config.DEFAULT_SEED,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the GPU grid, write ``out_path`` (default ``reports/benchmarks-gpu.json``) and return the results.

    Raises ``NoGpuError`` when TensorFlow sees no GPU, unless ``allow_cpu``. ``data_dir=None``
    uses the synthetic demo set (generated when missing).
    """
    import keras
    import tensorflow as tf

    from fracture_lib import datasets, synthetic
    from fracture_lib.bench import write_results
    from fracture_lib.bench.training import memory_data, pipeline_data
    from fracture_lib.cache import build_cache
    from fracture_lib.preprocess import PreprocessSettings
    from fracture_lib.train import library_versions

    started = time.perf_counter()
    plan = plan or GpuPlan()
    gpus = gpu_devices()
    if not gpus and not allow_cpu:
        raise NoGpuError("no GPU is visible to TensorFlow on this machine, so bench --gpu has nothing to measure "
                         "(install the gpu extra, check nvidia-smi, or pass --allow-cpu to run the grid on the CPU)")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised: memory growth cannot change any more
            tf.config.experimental.set_memory_growth(gpu, True)
    on_gpu = bool(gpus)
    device = _device_description(gpus)

    source = datasets.resolve_source(synthetic.ensure_demo_dataset(config.DEMO_DATA_ROOT) if data_dir is None
                                     else data_dir)
    index = datasets.build_index(source, seed=seed)
    count = min(plan.images, len(index)) // plan.batch_size * plan.batch_size
    if count < plan.batch_size:
        raise ParameterError(f"{source.root} has only {len(index)} images: the GPU benchmark needs at least "
                             f"{plan.batch_size} (one batch)")
    if count < len(index):
        index = index.sample(count, random_state=seed).sort_values("path").reset_index(drop=True)
    results: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "plan": asdict(plan), "device": device,
        "machine": {**library_versions(), "processor": platform.processor() or platform.machine()},
        "data": {"data_root": str(source.root), "source": source.kind, "synthetic": source.synthetic,
                 "images": count}}
    log(f"GPU benchmark on {device['kind']} {device['name']}: {plan.arch} at {plan.img_size} px, batch "
        f"{plan.batch_size}, {plan.steps} timed steps per cell, {count} images of {source.root}; "
        f"budget {plan.max_seconds:.0f} s")
    keras.utils.set_random_seed(seed)
    with tempfile.TemporaryDirectory(prefix="fracture-bench-gpu-") as cache_dir:
        cache = build_cache(index, source.root, PreprocessSettings(img_size=plan.img_size), cache_dir=cache_dir,
                            progress=False)
        results["cache_build"] = {"img_size": plan.img_size, "images": count, "workers": os.cpu_count(),
                                  "build_seconds": round(cache.build_seconds, 2),
                                  "images_per_second": round(cache.images_per_second, 1),
                                  "size_mb": round(cache.size_bytes / 1e6, 2)}
        log(f"cache build {plan.img_size} px: {count} images in {cache.build_seconds:.1f} s "
            f"({cache.images_per_second:.0f} images/s)")
        labels = cache.index["label"].to_numpy(dtype=np.float32)
        feeds = {"pipeline": pipeline_data(cache.images, labels, plan.batch_size, seed),
                 "memory": memory_data(cache.images, labels, plan.batch_size, seed, batches=plan.memory_batches)}
        cells, models, longest = [], {}, 0.0
        for number, (precision, xla) in enumerate(MODEL_ORDER):
            name = f"{precision}{', xla' if xla else ''}"
            order = FEEDINGS if number % 2 == 0 else tuple(reversed(FEEDINGS))
            reason = _over_budget(started, longest, plan)
            if reason:
                cells.extend(_skipped(precision, xla, feeding, reason) for feeding in order)
                log(f"skipped {name} (both feedings): {reason}")
                continue
            keras.backend.clear_session()
            gc.collect()
            model_started = time.perf_counter()
            model, facts = benchmark_model(plan.arch, plan.img_size, precision, xla, seed)
            models[name] = {**facts, "build_seconds": round(time.perf_counter() - model_started, 2)}
            for feeding in order:
                reason = _over_budget(started, longest, plan)
                if reason:
                    cells.append(_skipped(precision, xla, feeding, reason))
                    log(f"skipped {name} fed by {feeding}: {reason}")
                    continue
                cell_started = time.perf_counter()
                cells.append(_measure_cell(model, feeds[feeding], plan, on_gpu, precision, xla, feeding))
                cells[-1]["output_dtype"] = facts["output_dtype"]
                # A model's first cell also built and compiled it: the budget counts that too.
                longest = max(longest, time.perf_counter() - (model_started if feeding == order[0] else cell_started))
                log(_cell_line(cells[-1], on_gpu))
            del model
    results["models"] = models
    results["cells"] = cells
    results.update(_comparisons(cells))
    results["skipped_cells"] = sum("skipped" in cell for cell in cells)
    results["seconds"] = round(time.perf_counter() - started, 1)
    target = write_results(results, out_path or config.REPORTS_DIR / "benchmarks-gpu.json")
    efficiency = ", ".join(f"{name} {value:.3f}" for name, value in results["pipeline_efficiency"].items()
                           if value is not None)
    speedup = ", ".join(f"{name} {value:.2f}x" for name, value in results["mixed_precision_speedup"].items()
                        if value is not None)
    log(f"pipeline efficiency (pipeline / memory): {efficiency or 'n/a'}; mixed precision over float32: "
        f"{speedup or 'n/a'}")
    if results["skipped_cells"]:
        log(f"{results['skipped_cells']} of {len(cells)} cells skipped by the time budget of {plan.max_seconds:.0f} s")
    log(f"GPU benchmark took {results['seconds']:.0f} s; written to {target}")
    return results

