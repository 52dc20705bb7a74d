"""Speed benchmarks of the input pipeline, training and scoring: ``python -m fracture_lib bench``.

Everything is measured side by side in one run, on the synthetic demo data (or any data root),
on whatever machine runs it; results go to ``reports/benchmarks.json`` (written atomically) and
are printed. docs/benchmarks.md explains each figure and records a run. The benchmarks live in
one module each:

- **cache build** (here): images/s of ``cache.build_cache`` decoding and resizing into a fresh
  (temporary) cache at 128 px (every image) and 320 px, and the time to reuse it on a second call.
- **data-only throughput** (``loaders``): images/s with no model at 128 and 320 px, with the
  same flip and 30-degree rotation for every loader: ours (``pipeline.make_dataset`` on the
  cache), a parallel ``tf.data`` loader from files, ``keras.utils.image_dataset_from_directory``
  and the original project's serial loader; best and median of several passes, CPU ms per image,
  and ours over each of the others.
- **pipeline efficiency** (``training``): ``small_cnn`` training images/s fed by the pipeline over
  its images/s on augmented tensors in memory, one fresh process per measurement, through
  ``model.fit``; the median and spread of several repeats, and the CPU-time estimate.
- **epoch time** (``training``): one ``small_cnn`` epoch at 128 px fed by the pipeline versus the
  original serial loader, with the per-image costs that explain the ratio.
- **training speed** (``training``): images/s of ``small_cnn`` at 128 and 224 px and
  ``densenet121`` at 224 px on batches in memory.
- **scoring** (``scoring``): single-image latency p50/p95 (file to probability) and batch
  throughput of a trained ``small_cnn`` elbow model at 128 px, as ``predict`` scores.

``python -m fracture_lib bench --gpu`` runs the GPU benchmark instead (``gpu``: DenseNet-169 at
320 px in float32 and mixed precision, fed by the pipeline and from memory, with and without XLA;
``reports/benchmarks-gpu.json``); ``bench --scale`` the MURA-scale table (``scale``: time and peak
memory of the index, the cache, a training epoch and an evaluation against data size;
``reports/benchmarks-scale.json``).

Rates are the best of a few timed passes unless said otherwise, the usual way to keep other
processes on a shared machine out of a speed measurement; the CPU time per image (all threads of
the measuring process) is reported beside the wall-clock rates because it hardly depends on that
load.
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from fracture_lib import config
from fracture_lib.errors import ParameterError
from fracture_lib.files import write_json_atomically

# The names callers have used since the benchmark was one module. The training and gpu modules
# are imported where they are used, not here: `python -m fracture_lib.bench.training` (the
# efficiency worker) must not find its own module imported already by this package.
from fracture_lib.bench.loaders import (AUGMENTATION, LOADER_LABELS, bench_data_throughput, directory_dataset,
                                        naive_batches, naive_throughput, pipeline_throughput, tf_data_from_files,
                                        throughput_row)
from fracture_lib.bench.measure import Measurement
from fracture_lib.bench.scoring import bench_prediction, benchmark_latency

__all__ = ["AUGMENTATION", "BenchPlan", "Context", "FULL_PLAN", "LOADER_LABELS", "Measurement", "QUICK_PLAN",
           "bench_cache", "bench_data_throughput", "bench_prediction", "benchmark_latency", "directory_dataset",
           "naive_batches", "naive_throughput", "pipeline_throughput", "run_benchmarks", "tf_data_from_files",
           "throughput_row", "write_results"]


@dataclass(frozen=True)
class BenchPlan:
    """How much work each benchmark does (the full run, or the ``--quick`` smoke test)."""

    cache_images: int = 0            # images decoded by the 128 px cache build (0: every image)
    throughput_images: int = 1024    # images per pass of the data-only measurement (also the 320 px cache)
    throughput_passes: int = 3       # timed passes of every loader
    naive_images: int = 192          # images per pass of the original serial loader
    batch_size: int = 32
    efficiency_steps: int = 64       # training steps per epoch of an efficiency worker
    efficiency_epochs: int = 3       # timed epochs per worker (after one warm-up epoch)
    efficiency_repeats: int = 4      # repeats of the (pipeline, memory) pair, the first source alternating
    epoch_rounds: int = 2            # alternating (pipeline, serial loader) end-to-end epochs
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
                       efficiency_steps=16, efficiency_epochs=1, efficiency_repeats=2, epoch_rounds=1,
                       epoch_images=128, train_steps=3, densenet_steps=0, latency_repeats=20)


@dataclass
class Context:
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


def bench_cache(context: Context) -> list[dict[str, Any]]:
    """Build the 128 px cache of every image (and a 320 px one for the throughput test); time reuse."""
    from fracture_lib.cache import build_cache
    from fracture_lib.preprocess import PreprocessSettings

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


def _machine() -> dict[str, Any]:
    """The machine and library versions the figures were measured with (as a training run records them)."""
    from fracture_lib.train import library_versions

    return {**library_versions(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_before": [round(value, 2) for value in os.getloadavg()]}


def _targets(results: dict[str, Any]) -> dict[str, Any]:
    """Compare the figures with the targets of the issues (ratios measured side by side in this run)."""
    by_size = {item["img_size"]: item for item in results["data_throughput"]}
    largest = max(by_size)
    checks = {
        "pipeline_efficiency_at_least_0.95": results["pipeline_efficiency"]["efficiency"] >= 0.95,
        "pipeline_cpu_efficiency_at_least_0.95": results["pipeline_efficiency"]["cpu_efficiency"] >= 0.95,
        f"ours_at_least_3x_tf_data_from_files_at_{largest}px": by_size[largest]["ours_to_tf_data_files"] >= 3,
        "ours_at_least_5x_the_original_serial_loader": all(item["ours_to_original_serial"] >= 5
                                                           for item in by_size.values()),
        f"at_least_1000_images_per_second_at_{largest}px":
            by_size[largest]["loaders"]["pipeline"]["images_per_second"] >= 1000,
        "single_image_p50_under_100_ms": results["prediction"]["single_image_ms_p50"] < 100,
    }
    return {name: bool(value) for name, value in checks.items()}


def write_results(results: dict[str, Any], out_path: str | os.PathLike[str]) -> Path:
    """Write the results as JSON: a temporary file in the same folder, renamed when complete."""
    return write_json_atomically(out_path, results)


def run_benchmarks(out_path: str | os.PathLike[str] | None = None, quick: bool = False,
                   data_dir: str | os.PathLike[str] | None = None, seed: int = config.DEFAULT_SEED,
                   log: Callable[[str], None] = print, plan: BenchPlan | None = None) -> dict[str, Any]:
    """Run every benchmark, write ``out_path`` (default ``reports/benchmarks.json``) and return the results.

    ``data_dir=None`` uses the synthetic demo set (generated when missing); ``quick`` runs the
    small plan (about a minute and a half) instead of the full one (about five minutes on two free
    cores); ``plan``
    replaces both (the tests use a tiny one).
    """
    import keras

    from fracture_lib import datasets, synthetic
    from fracture_lib.bench.training import bench_efficiency, bench_epoch, bench_training

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
        context = Context(data_root, index, plan, Path(cache_dir), seed, log)
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
