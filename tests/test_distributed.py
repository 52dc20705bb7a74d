"""Two MultiWorkerMirroredStrategy workers on localhost shard the data and finish with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Each worker runs the ordinary train_model: the strategy comes from TF_CONFIG alone. It records
# every image its input pipeline augments (the rows of the cache) and prints them.
WORKER = textwrap.dedent("""
    import json, sys
    from fracture_lib import pipeline
    from fracture_lib.train import TrainConfig, train_model
    augmented = []
    original = pipeline.augment_images

    def recording(images, seed, settings, rows=None):
        augmented.extend(int(row) for row in rows)
        return original(images, seed, settings, rows=rows)

    pipeline.augment_images = recording
    result = train_model(
        TrainConfig(body_part="elbow", img_size=32, epochs=1, batch_size=8, data_dir=sys.argv[1],
                    run_name="mwms", seed=0),
        models_dir=sys.argv[2], verbose=0,
    )
    print("RUN_DIR", result.run_dir, "STRATEGY", result.config["strategy"], "REPLICAS", result.config["replicas"],
          "GLOBAL_BATCH", result.config["global_batch_size"])
    print("AUGMENTED", json.dumps(augmented))
""")


def _free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that nothing listens on right now."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _run_workers(data_root: Path, models_dir: Path, cache_root: Path) -> list[str]:
    """Start two workers of one cluster, wait for both, and return their standard outputs."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = []
    try:
        for task in range(2):
            environment = {
                **os.environ,
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": task}}),
                "FRACTURE_CACHE_DIR": str(cache_root / f"cache-{task}"),
                "CUDA_VISIBLE_DEVICES": "",
            }
            processes.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, str(data_root), str(models_dir)],
                env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        outputs = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
        return outputs
    finally:
        # A worker whose partner failed waits for it forever: stop it.
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.slow
def test_two_workers_train_identical_weights(tiny_demo_root: Path, tmp_path: Path) -> None:
    import keras

    from fracture_lib import datasets
    from fracture_lib.runs import load_run
    from fracture_lib.train import predict_split

    models_dir = tmp_path / "models"
    outputs = _run_workers(tiny_demo_root, models_dir, tmp_path)
    # Two replicas of 8 images each: the global batch is scaled with the replicas.
    assert all("STRATEGY MultiWorkerMirroredStrategy REPLICAS 2 GLOBAL_BATCH 16" in output for output in outputs), outputs

    # Each worker gathered and augmented only its own slice of every global batch, each image once:
    # the two shares are disjoint, about half each, and together every training image of the epoch.
    shares = [json.loads(output.split("AUGMENTED ", 1)[1].splitlines()[0]) for output in outputs]
    run_config = json.loads((models_dir / "elbow" / "mwms" / "config.json").read_text())
    train_count = run_config["images"]["train"]
    assert all(len(share) == len(set(share)) for share in shares)
    assert not set(shares[0]) & set(shares[1])
    assert len(shares[0]) + len(shares[1]) == train_count
    # A global batch of 16 splits 8 + 8; only the short last one may split unevenly.
    assert abs(len(shares[0]) - len(shares[1])) <= 1, (len(shares[0]), len(shares[1]))

    # The chief (worker 0) published the run; worker 1 kept its copy in its hidden work folder.
    chief_dir = models_dir / "elbow" / "mwms"
    worker_dir = models_dir / "elbow" / ".partial-mwms.worker-1"
    chief_weights = keras.saving.load_model(chief_dir / "model.keras", compile=False).get_weights()
    worker_weights = keras.saving.load_model(worker_dir / "model.keras", compile=False).get_weights()
    assert len(chief_weights) == len(worker_weights) > 0
    # Every weight, batch-normalisation moving averages included, is bit-identical.
    for chief_array, worker_array in zip(chief_weights, worker_weights):
        np.testing.assert_array_equal(chief_array, worker_array)

    # The validation predictions gathered across workers are in the index's order: one process
    # predicting with the saved model gets the same numbers.
    saved = pd.read_csv(chief_dir / "val_predictions.csv")
    run = load_run(chief_dir)
    index = datasets.build_index(tiny_demo_root, seed=run.config["split_seed"])
    again = predict_split(run, index, tiny_demo_root, split="val", cache_dir=tmp_path / "cache-check")
    assert list(again["path"]) == list(saved["path"])
    np.testing.assert_allclose(again["probability"], saved["probability"], atol=1e-5)


# MirroredStrategy on two logical CPUs stands in for two GPUs of one machine.
MIRRORED = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from fracture_lib import distribute
    from fracture_lib.train import TrainConfig, train_model
    distribute.choose_strategy = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = train_model(
        TrainConfig(body_part="elbow", img_size=32, epochs=1, batch_size=8, data_dir=sys.argv[1], run_name="mirrored",
                    seed=0, split_seed=0, learning_rate=0.002, augment_on="device"),
        models_dir=sys.argv[2], verbose=0,
    )
    print("RUN_DIR", result.run_dir)
""")


@pytest.mark.slow
def test_two_replicas_of_one_machine_scale_the_batch_and_learning_rate(tiny_demo_root: Path, tmp_path: Path) -> None:
    from fracture_lib import datasets
    from fracture_lib.runs import load_run
    from fracture_lib.train import predict_split

    models_dir = tmp_path / "models"
    environment = {**os.environ, "FRACTURE_CACHE_DIR": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.run([sys.executable, "-c", MIRRORED, str(tiny_demo_root), str(models_dir)], env=environment,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    run_dir = models_dir / "elbow" / "mirrored"
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["strategy"], saved["replicas"], saved["global_batch_size"]) == ("MirroredStrategy", 2, 16)
    # lr_scaling=linear: the optimiser used twice the one-replica rate for the doubled batch.
    assert saved["effective_learning_rate"] == pytest.approx(2 * 0.002)
    history = pd.read_csv(run_dir / "history.csv")
    assert np.isfinite(history["loss"]).all() and history["learning_rate"].iloc[0] == pytest.approx(0.004)
    # The model trained with augmentation on both replicas is the plain model: one device predicts what was saved.
    run = load_run(run_dir)
    index = datasets.build_index(tiny_demo_root, seed=0)
    again = predict_split(run, index, tiny_demo_root, split="val", cache_dir=tmp_path / "cache-check")
    np.testing.assert_allclose(again["probability"], pd.read_csv(run_dir / "val_predictions.csv")["probability"],
                               atol=1e-5)
