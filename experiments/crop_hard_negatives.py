"""Does showing a crop model its own false alarms fix its whole-film score? (hard-negative crops, validation only)

A model trained on crops (``train_crop``) finds fractures in crops centred on them, but the maximum
over a whole normal film often lands on a region that its training crops, centred on the bone,
rarely showed (``experiments/crop_diagnosis.py``). This experiment continues such a run for a few
epochs, with half of each normal training film's points of interest moved to the place the run
scores highest on that film (its class activation map: the output unit's weights times the last
convolutional layer's features, cell by cell), so half of the normal crops are the model's own
false alarms. (It was run, once, when normal films' crop points were all on the body; the points
it replaces are the first half, the body half, of ``crops.crop_points``.)

    python experiments/crop_hard_negatives.py experiments/models/hand/real-cpu-crop-448-256-seed42 --epochs 6

With ``--whole-films`` the run continues on whole films at its ``img_size`` instead (``train_crop=0``):
the last epochs then train what ``evaluate`` scores, the maximum over the whole film.

Logs to ``experiments/results/fracatlas-val.jsonl`` like ``fracatlas_recipe.py train``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from fracture_lib import crops, runs, train
from fracture_lib.models import last_conv_layer_name

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fracatlas_recipe  # noqa: E402  (the candidates' logging and validation figures)


def activation_peaks(model: keras.Model, images, batch_size: int = 32) -> np.ndarray:
    """``(N, 2)`` ``(x, y)``: each image's cell of highest class activation (output weights times features)."""
    features_model = keras.Model(model.inputs, model.get_layer(last_conv_layer_name(model)).output)
    kernel = model.get_layer("fracture_probability").get_weights()[0][:, 0]
    peaks = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size]).astype(np.float32)[..., None]
        maps = features_model.predict(batch, verbose=0) @ kernel
        rows, columns = np.unravel_index(maps.reshape(len(maps), -1).argmax(axis=1), maps.shape[1:])
        cell = batch.shape[1] / maps.shape[1]
        peaks.append(np.stack([(columns + 0.5) * cell, (rows + 0.5) * cell], axis=1))
    return np.concatenate(peaks).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--whole-films", action="store_true", help="continue on whole films (train_crop=0)")
    parser.add_argument("--data", type=Path, default=fracatlas_recipe.DEFAULT_DATA)
    arguments = parser.parse_args()
    first = runs.load_run(arguments.run_dir)
    started = time.perf_counter()
    weights = Path(tempfile.mkdtemp()) / "first-stage.weights.h5"
    first.model.save_weights(weights)
    original_points = crops.crop_points

    def hard_points(images, frame, source, img_size, seed):
        points = original_points(images, frame, source, img_size, seed)
        normal = np.flatnonzero(frame["label"].to_numpy() == 0)
        peaks = activation_peaks(first.model, images[normal])
        points[normal, : crops.POINTS_PER_IMAGE // 2] = peaks[:, None, :]
        return points

    if not arguments.whole_films:
        crops.crop_points = hard_points
    mode = "whole" if arguments.whole_films else "hard"
    name = f"{Path(arguments.run_dir).name.removesuffix('-seed42')}-{mode}{arguments.epochs}"
    values = {key: value for key, value in first.config.items() if key in train.TrainConfig.field_names()}
    values.update({"weights": str(weights), "epochs": arguments.epochs, "patience": arguments.epochs,
                   "warmup_epochs": 0, "learning_rate": arguments.learning_rate, "run_name": f"{name}-seed42"})
    if arguments.whole_films:
        values["train_crop"] = 0
    result = train.train_model(train.TrainConfig(**values), models_dir=fracatlas_recipe.MODELS_DIR, verbose=2)
    minutes = (time.perf_counter() - started) / 60
    plain, flipped = fracatlas_recipe._val_aurocs(result.run_dir, arguments.data)
    record = {"candidate": name, "part": values["body_part"], "seed": 42,
              "values": {"continues": str(arguments.run_dir), "epochs": arguments.epochs,
                         "learning_rate": arguments.learning_rate,
                         **({"train_crop": 0} if arguments.whole_films else {"hard_negative_share": 0.5})},
              "val_auroc": plain, "val_auroc_tta": flipped,
              "val_auroc_all_parts_tta": fracatlas_recipe._all_parts_val_auroc(result.run_dir, arguments.data),
              "best_epoch": (result.config["best_epoch"] or 0) + 1, "epochs_trained": result.config["epochs_trained"],
              "train_minutes": round(minutes, 2), "train_images": result.config["images"]["train"],
              "run_dir": str(result.run_dir), "finished": time.strftime("%Y-%m-%d %H:%M")}
    fracatlas_recipe._write_line(fracatlas_recipe.RESULTS_DIR / "fracatlas-val.jsonl", record)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
