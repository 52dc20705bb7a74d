"""The benchmark's loaders and a whole (tiny) benchmark run writing its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fracture_lib import bench, datasets


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


@pytest.mark.slow
def test_tiny_benchmark_run_writes_every_section(tiny_demo_root: Path, tmp_path: Path) -> None:
    plan = bench.BenchPlan(cache_images=64, throughput_images=64, throughput_passes=1, naive_images=16,
                           efficiency_steps=2, efficiency_rounds=2, epoch_rounds=1, epoch_images=32, train_steps=2,
                           densenet_steps=0, sizes=(64, 96), train_sizes=(64,), latency_images=4,
                           latency_repeats=5)
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
        assert row["pipeline"]["images_per_second"] > 0 and row["naive"]["images_per_second"] > 0
        assert row["speedup"] == pytest.approx(
            row["pipeline"]["images_per_second"] / row["naive"]["images_per_second"], rel=0.01, abs=0.06)
    assert 0 < saved["pipeline_efficiency"]["efficiency"]
    assert saved["prediction"]["single_image_ms_p95"] >= saved["prediction"]["single_image_ms_p50"] > 0
    assert saved["data"]["synthetic"] is True
    assert not list(tmp_path.glob(".bench.json.tmp-*"))
    assert any("targets:" in line for line in lines)
