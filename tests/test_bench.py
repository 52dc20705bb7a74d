"""The benchmark's loaders, the efficiency worker, the GPU benchmark (on the CPU) and a whole tiny run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fracture_lib import bench, datasets
from fracture_lib.bench import gpu, training
from fracture_lib.cli import main
from fracture_lib.errors import FractureLibError, ParameterError
from fracture_lib.preprocess import PreprocessSettings, load_and_preprocess


def _tiny_files(root: Path, count: int = 10) -> tuple[list[Path], np.ndarray]:
    index = datasets.build_index(root, seed=0).head(count)
    return [root / path for path in index["path"]], index["label"].to_numpy(dtype=np.float32)


def test_naive_loader_visits_every_image_once_per_epoch(tiny_demo_root: Path) -> None:
    index = datasets.build_index(tiny_demo_root, seed=0).head(10)
    paths = [tiny_demo_root / path for path in index["path"]]
    labels = np.arange(len(paths), dtype=np.float32)
    batches = list(bench.naive_batches(paths, labels, img_size=48, batch_size=4, seed=0, epochs=2))
    # Two epochs of 10 images in batches of 4: 3 batches each, the last one short.
    assert [len(batch[1]) for batch in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(np.concatenate([batch[1] for batch in epoch]).tolist()) == labels.tolist()
    images = batches[0][0]
    assert images.shape == (4, 48, 48, 1) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 255.0 and images.std() > 0
    # A new random order every epoch.
    first, second = (np.concatenate([batch[1] for batch in epoch]) for epoch in (batches[:3], batches[3:]))
    assert not np.array_equal(first, second)


def test_pipeline_throughput_counts_every_image() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(40, 32, 32), dtype=np.uint8)
    measurements = bench.pipeline_throughput(images, batch_size=16, passes=2, seed=0)
    assert [measurement.items for measurement in measurements] == [40, 40]
    assert all(measurement.seconds > 0 and measurement.rate > 0 for measurement in measurements)


@pytest.mark.parametrize("loader", ["tf_data_files", "image_dataset_from_directory"])
def test_file_loaders_yield_every_image_letterboxed_and_augmented(loader: str, tiny_demo_root: Path,
                                                                   tmp_path: Path) -> None:
    paths, labels = _tiny_files(tiny_demo_root)

    def batches(augment: bool, shuffle: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        if loader == "tf_data_files":
            dataset = bench.tf_data_from_files(paths, labels, 48, batch_size=4, seed=0, augment=augment, shuffle=shuffle)
        else:
            dataset = bench.directory_dataset(paths, labels, 48, tmp_path / "links", batch_size=4, seed=0,
                                              augment=augment, shuffle=shuffle)
        return [(np.asarray(images), np.asarray(batch_labels)) for images, batch_labels in dataset]

    augmented = batches(augment=True, shuffle=True)
    assert [len(images) for images, _ in augmented] == [4, 4, 2]
    assert sorted(np.concatenate([batch_labels for _, batch_labels in augmented]).tolist()) == sorted(labels.tolist())
    for images, _ in augmented:
        assert images.shape[1:] == (48, 48, 1) and images.dtype == np.float32
        assert images.min() >= 0.0 and images.max() <= 255.0 and images.std() > 0
    # Unshuffled, the same images come in the same order with and without the flip and rotation.
    plain, moved = batches(augment=False, shuffle=False), batches(augment=True, shuffle=False)
    for (plain_images, plain_labels), (moved_images, moved_labels) in zip(plain, moved):
        assert np.array_equal(plain_labels, moved_labels)
        assert np.abs(plain_images - moved_images).mean() > 1.0
    # Un-augmented, they are the images our cache holds (letterboxed the same way; interpolation aside).
    order = np.arange(len(paths)) if loader == "tf_data_files" else np.argsort(labels, kind="stable")
    ours = np.stack([load_and_preprocess(paths[row], PreprocessSettings(img_size=48)) for row in order])
    theirs = np.concatenate([images for images, _ in plain])[..., 0]
    assert np.abs(theirs - ours).mean(axis=(1, 2)).max() < 15


def test_directory_loader_links_the_same_files_by_label(tmp_path: Path, tiny_demo_root: Path) -> None:
    paths, labels = _tiny_files(tiny_demo_root, count=6)
    folder = bench.loaders.link_class_folders(paths, labels.astype(int), tmp_path / "links")
    links = sorted(folder.glob("*/*"))
    assert len(links) == 6 and all(link.is_symlink() for link in links)
    for link in links:
        position = int(link.stem)
        assert link.resolve() == paths[position].resolve()
        assert link.parent.name == ("abnormal" if labels[position] == 1 else "normal")
    with pytest.raises(ParameterError, match="label"):
        bench.loaders.link_class_folders(paths[:1], np.array([2]), tmp_path / "bad")


def test_memory_source_holds_augmented_batches_shaped_like_the_pipeline() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(32, 24, 24), dtype=np.uint8)
    labels = (np.arange(32) % 2).astype(np.float32)
    pipeline = training.pipeline_data(images, labels, batch_size=8, seed=0)
    memory = training.memory_data(images, labels, batch_size=8, seed=0, batches=2)
    # One training function serves both sources: the element structures are identical.
    assert memory.element_spec == pipeline.element_spec
    drawn = [np.asarray(batch[0]) for batch in memory.take(4)]
    assert all(batch.shape == (8, 24, 24, 1) for batch in drawn)
    # Two distinct batches, cycled; augmented (rotated: black corners), not the raw images.
    assert np.array_equal(drawn[0], drawn[2]) and not np.array_equal(drawn[0], drawn[1])
    assert not any(np.array_equal(batch[0, :, :, 0], image) for batch in drawn for image in images.astype(np.float32))


def test_efficiency_worker_entry_point_times_both_sources(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    images, labels = tmp_path / "images.npy", tmp_path / "labels.npy"
    np.save(images, rng.integers(0, 256, size=(48, 32, 32), dtype=np.uint8))
    np.save(labels, (np.arange(48) % 2).astype(np.float32))
    # The pipeline in a fresh process, as the benchmark runs it; the memory source through the same
    # entry point in this one (a second process would only repeat TensorFlow's start-up).
    fresh = training.run_efficiency_worker(images, labels, "pipeline", batch_size=8, steps=3, epochs=1, seed=0)
    assert fresh["pid"] != os.getpid()
    assert training.main(["efficiency-worker", "--source", "memory", "--images", str(images), "--labels", str(labels),
                          "--batch-size", "8", "--steps", "3", "--epochs", "1"]) == 0
    here = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for source, result in (("pipeline", fresh), ("memory", here)):
        assert result["source"] == source and result["img_size"] == 32 and result["steps_per_epoch"] == 3
        assert result["images_per_second"] > 0 and result["cpu_ms_per_image"] > 0
        assert len(result["epoch_images_per_second"]) == 1
    with pytest.raises(FractureLibError, match="memory efficiency worker failed"):
        training.run_efficiency_worker(tmp_path / "missing.npy", labels, "memory", steps=1, epochs=1)


def test_gpu_benchmark_without_a_gpu_says_so_in_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setattr(gpu, "gpu_devices", lambda: [])
    out = tmp_path / "gpu.json"
    assert main(["bench", "--gpu", "--out", str(out)]) != 0
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no GPU is visible") and "--allow-cpu" in error and "\n" not in error
    assert not out.exists()


def test_bench_refuses_gpu_options_without_gpu(capsys) -> None:
    assert main(["bench", "--steps", "2", "--allow-cpu"]) == 2
    assert "--steps, --allow-cpu only apply with --gpu" in capsys.readouterr().err
    with pytest.raises(ParameterError, match="steps"):
        gpu.GpuPlan(steps=0)


@pytest.mark.slow
def test_gpu_benchmark_on_the_cpu_writes_every_cell(tiny_demo_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "benchmarks-gpu.json"
    out.write_text("earlier results")
    assert main(["bench", "--gpu", "--allow-cpu", "--arch", "small_cnn", "--img-size", "32", "--steps", "2",
                 "--batch-size", "8", "--images", "36", "--data", str(tiny_demo_root), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    cells = saved["cells"]
    assert sorted((cell["precision"], cell["xla"], cell["feeding"]) for cell in cells) == sorted(
        (precision, xla, feeding) for precision in gpu.PRECISIONS for xla in (False, True) for feeding in gpu.FEEDINGS)
    assert saved["skipped_cells"] == 0
    for cell in cells:
        assert cell["images_per_second"] > 0 and cell["timed_steps"] == 2 and cell["output_dtype"] == "float32"
        assert (cell["peak_gpu_memory_mb"] is None) == (saved["device"]["kind"] == "CPU")
    assert saved["data"]["images"] == 32  # whole batches only
    assert saved["cache_build"]["images"] == 32 and saved["cache_build"]["build_seconds"] > 0
    mixed = saved["models"]["mixed_float16"]
    assert mixed["optimizer"] == "LossScaleOptimizer" and mixed["output_dtype"] == "float32"
    assert saved["models"]["float32"]["optimizer"] == "Adam"
    assert all(value is not None and value > 0 for value in saved["pipeline_efficiency"].values())
    assert all(value is not None and value > 0 for value in saved["mixed_precision_speedup"].values())
    assert not list(tmp_path.glob(".benchmarks-gpu.json.tmp-*"))
    assert "written to" in capsys.readouterr().out
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # the policy is restored


def test_gpu_benchmark_time_budget_skips_cells_and_says_so(tiny_demo_root: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    plan = gpu.GpuPlan(arch="small_cnn", img_size=32, batch_size=8, steps=1, images=16, max_seconds=0.001)
    results = gpu.run_gpu_benchmarks(tmp_path / "gpu.json", tiny_demo_root, plan, allow_cpu=True, log=lines.append)
    assert results["skipped_cells"] == len(results["cells"]) == 8
    assert all(cell["skipped"].startswith("time budget") for cell in results["cells"])
    assert any("skipped by the time budget" in line for line in lines)
    assert json.loads((tmp_path / "gpu.json").read_text())["skipped_cells"] == 8


@pytest.mark.slow
def test_tiny_benchmark_run_writes_every_section(tiny_demo_root: Path, tmp_path: Path) -> None:
    plan = bench.BenchPlan(cache_images=64, throughput_images=64, throughput_passes=1, naive_images=16,
                           efficiency_steps=2, efficiency_epochs=1, efficiency_repeats=1, epoch_rounds=1,
                           epoch_images=32, train_steps=2, densenet_steps=0, sizes=(64, 96), train_sizes=(64,),
                           latency_images=4, latency_repeats=5)
    out = tmp_path / "bench.json"
    (tmp_path / "bench.json").write_text("earlier results")
    lines: list[str] = []
    results = bench.run_benchmarks(out_path=out, data_dir=tiny_demo_root, plan=plan, log=lines.append)
    saved = json.loads(out.read_text())
    assert saved["targets"] == results["targets"]
    for section in ("cache_build", "data_throughput", "pipeline_efficiency", "epoch_time", "training", "prediction"):
        assert section in saved, section
    assert [row["img_size"] for row in saved["data_throughput"]] == [64, 96]
    for row in saved["data_throughput"]:
        loaders = row["loaders"]
        assert set(loaders) == {"pipeline", "tf_data_files", "image_dataset_from_directory", "original_serial"}
        assert loaders["original_serial"]["label"] == "the original project's loader (serial)"
        assert all(loader["images_per_second"] > 0 for loader in loaders.values())
        assert [loaders[name]["images_per_pass"] for name in loaders] == [64, 64, 64, 16]
        assert row["ours_to_tf_data_files"] == pytest.approx(
            loaders["pipeline"]["images_per_second"] / loaders["tf_data_files"]["images_per_second"], rel=0.01, abs=0.01)
    efficiency = saved["pipeline_efficiency"]
    assert efficiency["efficiency"] > 0 and len(efficiency["efficiency_per_repeat"]) == 1
    assert efficiency["efficiency_spread"]["min"] <= efficiency["efficiency"] <= efficiency["efficiency_spread"]["max"]
    assert {run["source"] for runs in efficiency["runs"].values() for run in runs} == {"pipeline", "memory"}
    assert saved["prediction"]["single_image_ms_p95"] >= saved["prediction"]["single_image_ms_p50"] > 0
    assert saved["data"]["synthetic"] is True
    assert not list(tmp_path.glob(".bench.json.tmp-*"))
    assert any("targets:" in line for line in lines)
    assert any("the original project's loader (serial)" in line for line in lines)


def test_efficiency_reads_a_memory_mapped_cache_in_place(tmp_path: Path) -> None:
    import pandas as pd
    from types import SimpleNamespace

    from fracture_lib.cache import IMAGES_FILENAME

    folder = tmp_path / "cache"
    folder.mkdir()
    np.save(folder / IMAGES_FILENAME, np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4))
    index = pd.DataFrame({"label": [0, 1, 0, 1, 0, 1]})
    context = SimpleNamespace(cache_dir=tmp_path / "work")
    context.cache_dir.mkdir()
    mapped = SimpleNamespace(images=np.load(folder / IMAGES_FILENAME, mmap_mode="r"), index=index, path=folder)
    images_file, labels_file = training.efficiency_inputs(context, mapped)
    # The whole memory-mapped cache is read where it lies; nothing is copied beside it.
    assert images_file == folder / IMAGES_FILENAME and not (context.cache_dir / "efficiency-images.npy").exists()
    np.testing.assert_array_equal(np.load(labels_file), index["label"].to_numpy(dtype=np.float32))
    # An in-memory cache (one that could not be written) is saved for the worker processes.
    in_memory = SimpleNamespace(images=np.asarray(mapped.images)[:3], index=index.iloc[:3], path=tmp_path / "none")
    images_file, _ = training.efficiency_inputs(context, in_memory)
    assert images_file == context.cache_dir / "efficiency-images.npy"
    np.testing.assert_array_equal(np.load(images_file), np.asarray(mapped.images)[:3])
