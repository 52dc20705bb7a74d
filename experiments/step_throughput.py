"""Training images a second of compact networks at several input sizes, alternating, in one session.

What a training epoch costs, in three parts: the model's step alone (one batch of random films fed
again and again), the augmentation alone (``pipeline.augment_images``, OpenCV), and ``model.fit``
over an augmented ``tf.data`` pipeline (both sharing the cores). The shared machine's speed swings
widely from minute to minute, so the configurations alternate over ``--repeats`` rounds and every
figure is kept: compare ranges, not single numbers.

    python experiments/step_throughput.py --configs small_cnn:192 small_cnn_patch4:320 small_cnn_patch4:384 small_cnn:256

Writes ``experiments/results/step-throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from fracture_lib import models, pipeline

HERE = Path(__file__).resolve().parent
BATCH_SIZE = 32
BATCHES = 30
# The preset's augmentation (params/real-cpu.yaml).
AUGMENT = pipeline.AugmentSettings(flip=True, rotation_degrees=15.0, zoom=0.1, translate=0.05, brightness=0.1,
                                   contrast=0.2, gamma=0.2)


def measure(arch: str, size: int) -> dict:
    """Images a second of the step alone, the augmentation alone and ``fit`` over the pipeline."""
    keras.backend.clear_session()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH_SIZE * BATCHES, size, size), dtype=np.uint8)
    labels = rng.integers(0, 2, BATCH_SIZE * BATCHES).astype(np.float32)
    model = models.build_model(arch, size)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="binary_crossentropy")
    batch = images[:BATCH_SIZE, ..., None].astype(np.float32)
    model.train_on_batch(batch, labels[:BATCH_SIZE])  # the first call traces the step
    started = time.perf_counter()
    for _ in range(BATCHES):
        model.train_on_batch(batch, labels[:BATCH_SIZE])
    step = BATCH_SIZE * BATCHES / (time.perf_counter() - started)
    started = time.perf_counter()
    for index in range(BATCHES):
        pipeline.augment_images(images[index * BATCH_SIZE:(index + 1) * BATCH_SIZE], (index, 1), AUGMENT)
    augment = BATCH_SIZE * BATCHES / (time.perf_counter() - started)
    dataset = pipeline.make_dataset(images, labels, BATCH_SIZE, training=True, augment=AUGMENT)
    model.fit(dataset, epochs=1, verbose=0)  # warm-up epoch
    started = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    fit = BATCH_SIZE * BATCHES / (time.perf_counter() - started)
    return {"arch": arch, "img_size": size, "step_images_per_s": round(step, 1),
            "augment_images_per_s": round(augment, 1), "fit_images_per_s": round(fit, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small_cnn:192", "small_cnn_patch4:320"],
                        help="ARCH:SIZE pairs, measured in this order every round")
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    rows = []
    for repeat in range(arguments.repeats):
        for item in arguments.configs:
            arch, size = item.split(":")
            rows.append({"repeat": repeat + 1, **measure(arch, int(size))})
            print(json.dumps(rows[-1]), flush=True)
    (HERE / "results" / "step-throughput.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
