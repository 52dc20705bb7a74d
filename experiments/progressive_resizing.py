"""Progressive resizing on FracAtlas: the early epochs on small films, the last ones at full size.

Round four (docs/real-data.md section 9) found the time limit binding: `real-cpu` with 40 epochs
at 256 px reached a hand validation AUROC of 0.871 in 23 minutes, past the 15-minute limit. A
256-px step costs about four times a 128-px one, and the gains of that run came in the last third
of the schedule, at small learning rates. This trains the same recipe with its first
``--early-epochs`` epochs on films cached at ``--early-size`` and the rest at ``img_size``, one
cosine schedule across both, to see whether the cheap early epochs keep the long schedule's
figure. The network (fully convolutional, global max pooling) takes any input size; validation
is always on whole films at ``img_size``.

It is a validation-only experiment written outside ``train_model`` (two ``fit`` calls on one
optimiser), so its run is not resumable and is saved only as best weights; the moving average of
the weights restarts at the switch (``keras.callbacks.SwapEMAWeights`` leaves the raw weights in
the model at the end of the first call).

    python experiments/progressive_resizing.py --early-size 128 --early-epochs 20 [--part hand]

Appends a line to ``experiments/results/fracatlas-val.jsonl`` like ``fracatlas_recipe.py train``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from fracture_lib import config, recipe, train
from fracture_lib.cache import build_cache
from fracture_lib.models import build_model
from fracture_lib.pipeline import make_dataset
from fracture_lib.preprocess import PreprocessSettings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fracatlas_recipe  # noqa: E402  (the candidates, the validation films and the results log)


class BestWeights(keras.callbacks.Callback):
    """Keep the weights of the epoch with the highest validation AUROC (the averaged ones, after the swap)."""

    def __init__(self) -> None:
        super().__init__()
        self.best, self.best_epoch, self.weights, self.history = -np.inf, -1, None, []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = float((logs or {}).get("val_auroc", -np.inf))
        self.history.append(value)
        if value > self.best:
            self.best, self.best_epoch, self.weights = value, epoch, self.model.get_weights()


def train_progressive(base: str, part: str, early_size: int, early_epochs: int, data: Path, seed: int,
                      epochs: int | None = None) -> dict:
    """Train ``base``'s recipe with its first ``early_epochs`` epochs at ``early_size``; log validation AUROC."""
    values = {"body_part": part, "data_dir": str(data), "seed": seed, **fracatlas_recipe.CANDIDATES[base]}
    if epochs is not None:
        values.update(epochs=epochs, patience=epochs)
    train_config = train.TrainConfig(**values)
    train_config.validate()
    if not 0 < early_epochs < train_config.epochs or not 16 <= early_size < train_config.img_size:
        raise ValueError("early_epochs must lie inside the schedule and early_size below img_size")
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    source, subset = train.training_index(train_config)
    full = build_cache(subset, source.root, train_config.preprocess_settings(), progress=False)
    early = build_cache(subset, source.root, PreprocessSettings(img_size=early_size, clahe=train_config.clahe),
                        progress=False)
    train_images, train_frame = full.select("train")
    early_images, early_frame = early.select("train")
    if not (early_frame["path"].to_numpy() == train_frame["path"].to_numpy()).all():
        raise RuntimeError("the two caches list the training films in different orders")
    # Validation holds the run's own part only (pooling adds other parts' training films alone).
    val_images, val_frame = full.select("val")
    train_targets = train_frame["label"].to_numpy()
    val_targets = val_frame["label"].to_numpy()
    class_weights = train.compute_class_weights(train_targets)
    train_weights = train._sample_weights(train_targets, class_weights)

    model = build_model(train_config.arch, train_config.img_size, seed=seed, any_input_size=True)
    steps = int(np.ceil(len(train_images) / train_config.batch_size))
    train._compile(model, train_config, steps_per_epoch=steps, learning_rate=train_config.learning_rate)
    augment = train_config.augment_settings()
    datasets_by_phase = [
        make_dataset(early_images, train_targets, train_config.batch_size, training=True, augment=augment,
                     seed=seed, sample_weights=train_weights),
        make_dataset(train_images, train_targets, train_config.batch_size, training=True, augment=augment,
                     seed=seed + 1, sample_weights=train_weights),
    ]
    val_data = make_dataset(val_images, val_targets, train_config.batch_size,
                            sample_weights=train._sample_weights(val_targets, class_weights))
    best = BestWeights()
    callbacks = [*recipe.ema_callbacks(train_config.ema_momentum), best]
    model.fit(datasets_by_phase[0], validation_data=val_data, epochs=early_epochs, callbacks=callbacks, verbose=2)
    model.fit(datasets_by_phase[1], validation_data=val_data, initial_epoch=early_epochs,
              epochs=train_config.epochs, callbacks=callbacks, verbose=2)
    minutes = (time.perf_counter() - started) / 60
    model.set_weights(best.weights)
    plain = float(roc_auc_score(val_targets, train.predict_images(model, val_images)))
    flipped = float(roc_auc_score(val_targets, train.predict_images(model, val_images, tta=True)))
    every_image, every_frame = fracatlas_recipe.all_validation_films(data, train_config.split_seed,
                                                                     train_config.preprocess_settings())
    all_parts = float(roc_auc_score(every_frame["label"].to_numpy(),
                                    train.predict_images(model, every_image, tta=True)))
    name = f"{base}-early{early_size}x{early_epochs}"
    record = {"candidate": name, "part": part, "seed": seed,
              "values": {**fracatlas_recipe.CANDIDATES[base], "early_size": early_size, "early_epochs": early_epochs},
              "val_auroc": plain, "val_auroc_tta": flipped, "val_auroc_all_parts_tta": all_parts,
              "best_epoch": best.best_epoch + 1, "epochs_trained": len(best.history),
              "val_auroc_by_epoch": [round(value, 4) for value in best.history],
              "train_minutes": round(minutes, 2), "train_images": int(len(train_images)),
              "finished": time.strftime("%Y-%m-%d %H:%M")}
    if epochs is None:
        # A quick check with fewer epochs is printed, not logged with the results.
        fracatlas_recipe._write_line(fracatlas_recipe.RESULTS_DIR / "fracatlas-val.jsonl", record)
    print(json.dumps(record))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="real-cpu-40-epochs", help="the candidate whose values are trained")
    parser.add_argument("--part", default="hand")
    parser.add_argument("--early-size", type=int, default=128)
    parser.add_argument("--early-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--data", type=Path, default=fracatlas_recipe.DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=None, help="override the base's epochs (a quick check)")
    arguments = parser.parse_args()
    train_progressive(arguments.base, arguments.part, arguments.early_size, arguments.early_epochs,
                      arguments.data, arguments.seed, arguments.epochs)


if __name__ == "__main__":
    main()
