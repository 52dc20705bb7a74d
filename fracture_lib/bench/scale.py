"""Time and peak memory against data-set size, up to MURA's 40,005 films: ``bench --scale ROOT``.

``ROOT`` is a MURA-layout tree, usually the one ``python -m fracture_lib demo-data data/mura-scale
--layout-from path/to/MURA-v1.1-csv`` lays out from MURA's real label files (every path, films
drawn at MURA's size). Smaller sizes are trees of whole patients drawn at random from it (their
patient folders linked, their CSV files cut to match), so every size is read exactly as a user's
data root would be. For each size it measures:

- **index**: ``datasets.build_index`` of the whole tree (every part);
- **cache at 128 and 320 px**: ``cache.build_cache`` of every image into a fresh cache folder,
  then ``select("train")`` and one augmented pass of ``pipeline.make_dataset`` over the training
  split (data only), the way training reads it;
- **training epoch** (128 px): ``train.train_model`` of a ``small_cnn`` elbow model pooled over every
  part's training films (``pool_parts: [all]``), one epoch, on the 128-px cache just built: the
  epoch itself and the whole command (which also scores the validation split and fits the
  unfamiliar-input rule over the training films);
- **evaluation**: ``evaluation.evaluate_run`` of that model on its test split (MURA's ``valid``).

Every step runs in a fresh Python process, so its peak resident memory (``ru_maxrss``: the
process's own pages and the pages of the memory-mapped cache it touched) is its own; a process
that only imports TensorFlow and the library gives the baseline every step carries.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fracture_lib import config
from fracture_lib.errors import DataLayoutError, FractureLibError, ParameterError

DEFAULT_SIZES: tuple[int | None, ...] = (1000, 5000, 20000, None)  # None: every image of the tree
CACHE_SIZES = (128, 320)
STEP_TIMEOUT_SECONDS = 3600


def _peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _read_tree(root: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Each MURA split's image paths and labelled studies, as in the tree's CSV files."""
    mura_dir = root / config.MURA_DIRNAME
    tables = {}
    for mura_split in ("train", "valid"):
        paths_file, studies_file = (mura_dir / f"{mura_split}_image_paths.csv",
                                    mura_dir / f"{mura_split}_labeled_studies.csv")
        for path in (paths_file, studies_file):
            if not path.is_file():
                raise DataLayoutError(f"{path} is missing: pass a MURA-layout tree, e.g. one made by "
                                      "`demo-data data/mura-scale --layout-from path/to/MURA-v1.1-csv`")
        tables[mura_split] = (pd.read_csv(paths_file, header=None, names=["path"]),
                              pd.read_csv(studies_file, header=None, names=["study", "label"]))
    return tables


def subset_tree(root: str | os.PathLike[str], images: int, out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Lay out a tree of about ``images`` films of whole patients drawn at random from ``root``.

    Patient folders are symbolic links into ``root``; the four CSV files list exactly the films
    and studies kept. Returns ``out_dir``.
    """
    root, out_dir = Path(root).resolve(), Path(out_dir)
    if isinstance(images, bool) or not isinstance(images, (int, np.integer)) or images < 1:
        raise ParameterError(f"images={images!r} must be a positive number")
    tables = _read_tree(root)
    frames = []
    for mura_split, (paths, _) in tables.items():
        frames.append(paths.assign(split=mura_split, patient=paths["path"].str.rsplit("/", n=2).str[0]))
    every = pd.concat(frames, ignore_index=True)
    counts = every.groupby("patient", sort=False).size()
    order = np.random.default_rng(seed).permutation(len(counts))
    kept = counts.iloc[order][counts.iloc[order].cumsum() <= images].index
    chosen = set(kept)
    shutil.rmtree(out_dir, ignore_errors=True)
    mura_dir = out_dir / config.MURA_DIRNAME
    mura_dir.mkdir(parents=True)
    for patient in kept:
        link = out_dir / patient
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(root / patient, target_is_directory=True)
    for mura_split, (paths, studies) in tables.items():
        keep_paths = paths[paths["path"].str.rsplit("/", n=2).str[0].isin(chosen)]
        keep_studies = studies[studies["study"].str.rstrip("/").str.rsplit("/", n=1).str[0].isin(chosen)]
        keep_paths.to_csv(mura_dir / f"{mura_split}_image_paths.csv", header=False, index=False)
        keep_studies.to_csv(mura_dir / f"{mura_split}_labeled_studies.csv", header=False, index=False)
    marker = root / config.MURA_DIRNAME / "SYNTHETIC_DEMO.json"
    if marker.is_file():
        # A subset of a synthetic tree is synthetic too (training and evaluation say so).
        shutil.copy(marker, mura_dir / marker.name)
    return out_dir


# ---------------------------------------------------------------------------------------------
# The steps, each run in its own process (``python -m fracture_lib.bench.scale STEP JSON``)
# ---------------------------------------------------------------------------------------------

def _step_baseline(arguments: dict[str, Any]) -> dict[str, Any]:
    """Import what every step imports, and nothing else."""
    for module in ("tensorflow", "keras", "fracture_lib.cache", "fracture_lib.evaluation", "fracture_lib.train"):
        importlib.import_module(module)
    return {}


def _step_index(arguments: dict[str, Any]) -> dict[str, Any]:
    """Index the whole tree."""
    from fracture_lib import datasets

    started = time.perf_counter()
    index = datasets.build_index(arguments["root"], seed=config.DEFAULT_SEED)
    return {"seconds": time.perf_counter() - started, "images": len(index),
            "splits": {split: int((index["split"] == split).sum()) for split in ("train", "val", "test")}}


def _step_cache(arguments: dict[str, Any]) -> dict[str, Any]:
    """Build the cache of every image, select the training split and read it once, augmented."""
    from fracture_lib import datasets
    from fracture_lib.cache import build_cache
    from fracture_lib.pipeline import AugmentSettings, make_dataset
    from fracture_lib.preprocess import PreprocessSettings

    index = datasets.build_index(arguments["root"], seed=config.DEFAULT_SEED)
    started = time.perf_counter()
    built = build_cache(index, arguments["root"], PreprocessSettings(img_size=int(arguments["img_size"])),
                        cache_dir=arguments["cache_dir"], progress=False)
    build_seconds = time.perf_counter() - started
    after_build = _peak_rss_bytes()
    started = time.perf_counter()
    train_images, train_rows = built.select("train")
    select_seconds = time.perf_counter() - started
    started = time.perf_counter()
    dataset = make_dataset(train_images, train_rows["label"].to_numpy(dtype=np.float32), batch_size=32,
                           training=True, augment=AugmentSettings(), seed=config.DEFAULT_SEED)
    seen = sum(int(images.shape[0]) for images, _ in dataset)
    return {"build_seconds": build_seconds, "build_images_per_second": len(index) / build_seconds,
            "cache_bytes": built.size_bytes, "images": len(index), "train_images": len(train_images),
            "select_seconds": select_seconds, "pass_seconds": time.perf_counter() - started, "pass_images": seen,
            "peak_rss_after_build_bytes": after_build}


def _step_train(arguments: dict[str, Any]) -> dict[str, Any]:
    """Train one epoch (a small_cnn elbow model pooled over every part) on the cache built before."""
    import keras

    from fracture_lib.train import TrainConfig, train_model

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds = time.perf_counter() - self.started

    timer = EpochTimer()
    settings = TrainConfig(body_part="elbow", pool_parts=("all",), epochs=1, img_size=int(arguments["img_size"]),
                           data_dir=arguments["root"], run_name="scale", seed=config.DEFAULT_SEED)
    started = time.perf_counter()
    result = train_model(settings, models_dir=arguments["models_dir"], verbose=0, extra_callbacks=[timer])
    return {"seconds": time.perf_counter() - started, "epoch_seconds": timer.seconds,
            "train_images": result.config["images"]["train"], "run_dir": str(result.run_dir)}


def _step_evaluate(arguments: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the model of the training step on its test split."""
    from fracture_lib import evaluation, runs

    run = runs.load_run(runs.find_run("elbow", "scale", models_dir=arguments["models_dir"]))
    started = time.perf_counter()
    try:
        result = evaluation.evaluate_run(run, split="test", n_boot=200, seed=config.DEFAULT_SEED)
    except FractureLibError as error:
        # A small subset may hold no elbow study of MURA's valid split: nothing to evaluate.
        return {"skipped": str(error)}
    return {"seconds": time.perf_counter() - started, "test_images": int(len(result.predictions))}


STEPS = {"baseline": _step_baseline, "index": _step_index, "cache": _step_cache, "train": _step_train,
         "evaluate": _step_evaluate}


def run_step(step: str, arguments: dict[str, Any], cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run one step in a fresh Python process; return its figures with its peak resident memory."""
    if step not in STEPS:
        raise ParameterError(f"step={step!r}: choose from {', '.join(STEPS)}")
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                   "TF_CPP_MIN_LOG_LEVEL": "2"}
    if cache_dir is not None:
        environment["FRACTURE_CACHE_DIR"] = str(cache_dir)
    completed = subprocess.run([sys.executable, "-m", "fracture_lib.bench.scale", step, json.dumps(arguments)],
                               env=environment, capture_output=True, text=True, timeout=STEP_TIMEOUT_SECONDS)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"scale step {step} failed (exit {completed.returncode}): {last}")
    return json.loads(lines[-1])


def scale_benchmark(root: str | os.PathLike[str], sizes: Sequence[int | None] = DEFAULT_SIZES,
                    cache_sizes: Sequence[int] = CACHE_SIZES, work_dir: str | os.PathLike[str] | None = None,
                    train_img_size: int = 128, progress: bool = True) -> dict[str, Any]:
    """Measure every step at every size; return the rows and the baseline (see the module docstring).

    ``work_dir`` (default: a temporary folder, removed afterwards) holds the subset trees, the
    caches and the models; the caches of one size are deleted before the next size starts.
    """
    root = Path(root).resolve()
    total = sum(len(paths) for paths, _ in _read_tree(root).values())
    temporary = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="fracture-scale-")) if temporary else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    baseline = run_step("baseline", {})
    rows = []
    try:
        for size in sizes:
            wanted = total if size is None or size >= total else int(size)
            tree = root if wanted == total else subset_tree(root, wanted, work / f"tree-{wanted}")
            caches, models = work / f"cache-{wanted}", work / f"models-{wanted}"
            row: dict[str, Any] = {"requested_images": wanted}
            row["index"] = run_step("index", {"root": str(tree)})
            row["images"] = row["index"]["images"]
            for img_size in cache_sizes:
                arguments = {"root": str(tree), "img_size": img_size, "cache_dir": str(caches / f"{img_size}px")}
                row[f"cache_{img_size}"] = run_step("cache", arguments)
            # Training reuses the cache of its size built above, as a second `train` would.
            train_cache = caches / f"{train_img_size}px"
            step_arguments = {"root": str(tree), "img_size": train_img_size, "models_dir": str(models)}
            row["train"] = run_step("train", step_arguments, cache_dir=train_cache)
            row["evaluate"] = run_step("evaluate", step_arguments, cache_dir=train_cache)
            rows.append(row)
            if progress:
                print(json.dumps(row), flush=True)
            shutil.rmtree(caches, ignore_errors=True)
            shutil.rmtree(models, ignore_errors=True)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    return {"root": str(root), "tree_images": total, "baseline": baseline, "rows": rows}


DEFAULT_TREE = config.DATA_DIR / "mura-scale"


def parse_sizes(text: str) -> tuple[int | None, ...]:
    """``"1000,5000,all"`` -> ``(1000, 5000, None)``; ``all`` is every image of the tree."""
    sizes: list[int | None] = []
    for item in (part.strip() for part in str(text).split(",")):
        if item == "all":
            sizes.append(None)
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise ParameterError(f"size {item!r} in --sizes {text!r}: give positive numbers of images or 'all', "
                                 "e.g. 1000,5000,20000,all")
    return tuple(sizes)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per size: seconds and peak memory of each step, and peak memory over the cache's size."""
    rows = []
    for row in results["rows"]:
        flat = {"images": row["images"], "index_s": round(row["index"]["seconds"], 2),
                "index_peak_gb": round(row["index"]["peak_rss_bytes"] / 1e9, 2)}
        for key in sorted(name for name in row if name.startswith("cache_")):
            step, size = row[key], key.removeprefix("cache_")
            flat.update({f"cache{size}_build_s": round(step["build_seconds"], 1),
                         f"cache{size}_gb": round(step["cache_bytes"] / 1e9, 3),
                         f"cache{size}_peak_gb": round(step["peak_rss_bytes"] / 1e9, 2),
                         f"cache{size}_peak_over_cache": round(step["peak_rss_bytes"] / step["cache_bytes"], 3),
                         f"cache{size}_pass_images_per_s": round(step["pass_images"] / step["pass_seconds"])})
        flat.update({"epoch_s": round(row["train"]["epoch_seconds"], 1), "train_command_s": round(row["train"]["seconds"], 1),
                     "train_peak_gb": round(row["train"]["peak_rss_bytes"] / 1e9, 2),
                     "evaluate_s": round(row["evaluate"]["seconds"], 1) if "seconds" in row["evaluate"] else None,
                     "evaluate_peak_gb": round(row["evaluate"]["peak_rss_bytes"] / 1e9, 2)})
        rows.append(flat)
    return rows


def run_scale_benchmarks(data_dir: str | os.PathLike[str] | None = None, out_path: str | os.PathLike[str] | None = None,
                         sizes: Sequence[int | None] = DEFAULT_SIZES, cache_sizes: Sequence[int] = CACHE_SIZES,
                         train_img_size: int = 128) -> dict[str, Any]:
    """``bench --scale``: measure, print a table, and write ``reports/benchmarks-scale.json`` atomically."""
    from fracture_lib.bench import _machine, write_results

    root = Path(data_dir) if data_dir is not None else DEFAULT_TREE
    if not (root / config.MURA_DIRNAME).is_dir():
        raise DataLayoutError(f"{root / config.MURA_DIRNAME} is missing: lay out the MURA-scale tree first with "
                              f"`python -m fracture_lib demo-data {root} --layout-from path/to/MURA-v1.1-csv`")
    machine, started = _machine(), time.perf_counter()
    results = {"machine": machine, **scale_benchmark(root, sizes, cache_sizes, train_img_size=train_img_size),
               "train_img_size": int(train_img_size)}
    results["seconds"] = time.perf_counter() - started
    results["table"] = summary_rows(results)
    print(pd.DataFrame(results["table"]).set_index("images").T.to_string())
    path = write_results(results, out_path or config.REPORTS_DIR / "benchmarks-scale.json")
    print(f"written to {path}")
    return results


def _main(argv: Sequence[str]) -> int:
    """Worker entry point: ``python -m fracture_lib.bench.scale STEP JSON_ARGUMENTS``; prints one JSON line."""
    step, arguments = argv[0], json.loads(argv[1])
    started = time.perf_counter()
    figures = STEPS[step](arguments)
    figures.update({"step": step, "wall_seconds": time.perf_counter() - started, "peak_rss_bytes": _peak_rss_bytes()})
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
