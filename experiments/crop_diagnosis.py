"""Why a model trained on crops scores whole films as it does: its validation AUROC on crops and on whole films.

A run trained with ``train_crop`` (``fracture_lib/crops.py``) is scored on FracAtlas's validation
films of its part four ways:

- ``whole film``: what ``evaluate`` does (the film at ``img_size``, its most suspicious region);
- ``crops as in training``: one ``train_crop`` square per film, centred on a point of interest
  (a fracture box on abnormal films, the body elsewhere), without jitter or augmentation;
- ``fractured films, crop on the body``: abnormal films cropped around a body point instead of their
  box, against the normal films' body crops: a model that finds the fracture itself ranks these
  near chance, one that knows the film by something else does not;
- ``normal films, crop where a fracture was``: normal films cropped at the box position of a fractured
  film (drawn at random), against the fractured films' box crops: a model that learned where fractures
  tend to lie, not what they look like, ranks these near chance;
- ``sliding window``: the highest score over crops on a grid (stride a quarter of the crop).

    python experiments/crop_diagnosis.py experiments/models/hand/real-cpu-crop-448-256-seed42

Writes ``experiments/results/crop-diagnosis.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from fracture_lib import crops, datasets, runs, train
from fracture_lib.models import build_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fracatlas_recipe  # noqa: E402  (the validation films)


def _crop(image: np.ndarray, centre: np.ndarray, side: int) -> np.ndarray:
    """The ``side`` square of ``image`` centred on ``centre`` (x, y), padded with black outside the film."""
    padded = np.pad(image, side)
    x, y = (np.round(centre).astype(int) + side - side // 2)
    return padded[y:y + side, x:x + side]


def _scores(model, batches: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([model.predict(batch[..., None].astype(np.float32), verbose=0)[:, 0] for batch in batches])


def diagnose(run_dir: Path, data: Path) -> dict:
    run = runs.load_run(run_dir)
    side, size = int(run.config["train_crop"]), int(run.config["img_size"])
    source = datasets.resolve_source(data)
    images, frame = fracatlas_recipe.own_part_validation_films(run, data)
    films = np.asarray(images)
    labels = frame["label"].to_numpy()
    points = crops.crop_points(films, frame, source, size, seed=0)
    # The same weights in a network that takes any input size.
    any_size = build_model(run.config["arch"], size, seed=0, head=run.config.get("head", "pooled"), any_input_size=True)
    any_size.set_weights(run.model.get_weights())

    whole = train.predict_images(run.model, films)
    first_point = [_crop(film, point[0], side) for film, point in zip(films, points)]
    as_training = _scores(any_size, [np.stack(first_point)])
    rng = np.random.default_rng(0)
    body_crops = [_crop(film, crops.body_points(film, 1, rng)[0], side) for film in films]
    on_body = _scores(any_size, [np.stack(body_crops)])
    fractured = np.flatnonzero(labels == 1)
    borrowed = points[rng.choice(fractured, len(films)), 0]
    borrowed[fractured] = points[fractured, 0]
    at_borrowed = _scores(any_size, [np.stack([_crop(film, point, side) for film, point in zip(films, borrowed)])])
    stride = side // 4
    starts = list(range(0, size - side + 1, stride))
    windows = np.stack([np.stack([film[top:top + side, left:left + side] for top in starts for left in starts])
                        for film in films])
    sliding = _scores(any_size, list(windows)).reshape(len(films), -1).max(axis=1)
    result = {
        "run": str(run_dir), "films": int(len(films)), "fractured": int(labels.sum()), "img_size": size,
        "train_crop": side,
        "val_auroc": {
            "whole film": float(roc_auc_score(labels, whole)),
            "crops as in training": float(roc_auc_score(labels, as_training)),
            "fractured films, crop on the body": float(roc_auc_score(labels, on_body)),
            "normal films, crop where a fracture was": float(roc_auc_score(labels, at_borrowed)),
            f"sliding window ({len(starts) ** 2} crops, stride {stride})": float(roc_auc_score(labels, sliding)),
        },
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=fracatlas_recipe.DEFAULT_DATA)
    arguments = parser.parse_args()
    result = diagnose(arguments.run_dir, arguments.data)
    path = HERE / "results" / "crop-diagnosis.json"
    earlier = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps([*earlier, result], indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
