"""Score a trained run's validation films at other input sizes than it trained at (no retraining).

A compact network is fully convolutional, so the weights of a run trained at 256 px can score films
resized to 224-352 px. Models trained with random resized crops often do better when tested a
little larger than trained (Touvron et al., "Fixing the train-test resolution discrepancy", 2019);
this measures whether FracAtlas's validation films say so. Validation split only, flip TTA.

    python experiments/test_resolution.py experiments/models/hand/real-cpu-seed42 experiments/models/hand/real-cpu-seed43
    python experiments/test_resolution.py experiments/models/hand/real-cpu-192-40-epochs-seed42 \
        --sizes 192 224 256 288 --out test-resolution-192.json

Writes ``experiments/results/test-resolution.json`` (or ``--out``'s name there).

A size that met a round's rule for the test split is looked at there once (own part, flip TTA,
threshold 0.5, 95% intervals from 1,000 patient resamples), logged to ``fracatlas-test.jsonl``
like ``fracatlas_recipe.py test`` and refused a second time:

    python experiments/test_resolution.py experiments/models/hand/real-cpu-192-40-epochs-seed42 --test-once 224
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from sklearn.metrics import roc_auc_score

from fracture_lib import metrics, runs, train
from fracture_lib.models import build_model
from fracture_lib.preprocess import PreprocessSettings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fracatlas_recipe  # noqa: E402  (the validation films)
SIZES = (224, 256, 288, 320, 352)


def any_size_model(run: runs.LoadedRun) -> Any:
    """The run's weights in the same network built for any input size."""
    model = build_model(run.config["arch"], run.config["img_size"], seed=0, any_input_size=True)
    model.set_weights(run.model.get_weights())
    return model


def score_own_part(run_dir: Path, data: Path, size: int, split: str) -> dict:
    """AUROC and kappa with patient-bootstrap intervals, sensitivity and specificity at 0.5, of a run's
    weights scored at ``size`` on its own part's films of ``split`` (flip TTA)."""
    run = runs.load_run(run_dir)
    images, frame = fracatlas_recipe.own_part_validation_films(
        run, data, split, PreprocessSettings(img_size=size, clahe=run.config["clahe"]))
    probabilities = train.predict_images(any_size_model(run), images, tta=True)
    intervals = metrics.bootstrap_intervals(frame["label"].to_numpy(), probabilities,
                                            frame["patient"].to_numpy(), threshold=0.5, n_boot=1000)
    return {"auroc": intervals.loc["auroc"].to_dict(), "kappa": intervals.loc["kappa"].to_dict(),
            "sensitivity": float(intervals.loc["sensitivity", "value"]),
            "specificity": float(intervals.loc["specificity", "value"]), "films": int(len(frame))}


def test_once(run_dir: Path, data: Path, size: int) -> dict:
    """Look at the test split once for a run scored at ``size``; refuse a second look."""
    name, seed = run_dir.name.rsplit("-seed", 1)
    candidate, seed, part = f"{name}-scored-at-{size}", int(seed), runs.load_run(run_dir).config["body_part"]
    print("validation, as a check of the scoring:", json.dumps(score_own_part(run_dir, data, size, "val")), flush=True)
    fracatlas_recipe.refuse_second_look(candidate, part)
    scores = score_own_part(run_dir, data, size, "test")
    record = {"candidate": candidate, "part": part, "seed": seed, "tta": True, "test_auroc": scores["auroc"],
              "test_kappa": scores["kappa"], "sensitivity": scores["sensitivity"],
              "specificity": scores["specificity"], "threshold": 0.5, "test_films": scores["films"],
              "looked": time.strftime("%Y-%m-%d %H:%M")}
    fracatlas_recipe._write_line(fracatlas_recipe.TEST_LOG, record)
    print(json.dumps(record))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=fracatlas_recipe.DEFAULT_DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="input sizes to score at")
    parser.add_argument("--out", default="test-resolution.json", help="file name under experiments/results")
    parser.add_argument("--test-once", type=int, default=None, metavar="SIZE",
                        help="score one run's own-part test films at SIZE, once (after its rule was met)")
    arguments = parser.parse_args()
    if arguments.test_once is not None:
        if len(arguments.run_dirs) != 1:
            parser.error("--test-once takes one run")
        test_once(arguments.run_dirs[0], arguments.data, arguments.test_once)
        return
    rows = []
    for run_dir in arguments.run_dirs:
        run = runs.load_run(run_dir)
        any_size = any_size_model(run)
        for size in arguments.sizes:
            images, frame = fracatlas_recipe.all_validation_films(
                arguments.data, run.config["split_seed"], PreprocessSettings(img_size=size, clahe=run.config["clahe"]))
            probabilities = train.predict_images(any_size, images, tta=True)
            own_part = (frame["body_part"] == run.config["body_part"]).to_numpy()
            row = {"run": run_dir.name, "trained_at": run.config["img_size"], "scored_at": size,
                   "own_part_val_auroc": float(roc_auc_score(frame["label"][own_part], probabilities[own_part])),
                   "all_parts_val_auroc": float(roc_auc_score(frame["label"], probabilities))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (HERE / "results" / arguments.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
