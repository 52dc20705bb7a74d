"""Scoring speed: single-image latency and batch throughput of a trained model, as ``predict`` scores.

``benchmark_latency`` times a loaded run (file to probability, and the forward pass alone, p50
and p95 over many calls; batch throughput forward only and from files). ``bench_prediction``
trains a one-epoch ``small_cnn`` elbow run at 128 px into a temporary folder and measures it:
speed does not depend on how well a model was trained.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fracture_lib.errors import ParameterError

if TYPE_CHECKING:
    from fracture_lib.bench import Context


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


def bench_prediction(context: Context) -> dict[str, Any]:
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
