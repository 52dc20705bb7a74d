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

from sklearn.metrics import roc_auc_score

from fracture_lib import metrics, runs, train
from fracture_lib.cache import build_cache
from fracture_lib.models import build_model
from fracture_lib.preprocess import PreprocessSettings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fracatlas_recipe  # noqa: E402  (the validation films)
SIZES = (224, 256, 288, 320, 352)


def own_part_films(run: runs.LoadedRun, data: Path, split: str, size: int) -> tuple:
    """The run's own part's films of ``split``, preprocessed at ``size``: ``(images, frame)``."""
    values = {key: value for key, value in run.config.items() if key in train.TrainConfig.field_names()}
    _, subset = train.training_index(train.TrainConfig(**{**values, "data_dir": str(data)}))
    subset = train.own_part_rows(subset, run.config)
    return build_cache(subset, data, PreprocessSettings(img_size=size, clahe=run.config["clahe"]),
                       progress=False).select(split)


def score_split_once(run_dir: Path, data: Path, size: int, split: str) -> dict:
    """AUROC and kappa with patient-bootstrap intervals of a run's weights scored at ``size`` on ``split``."""
    run = runs.load_run(run_dir)
    any_size = build_model(run.config["arch"], run.config["img_size"], seed=0, any_input_size=True)
    any_size.set_weights(run.model.get_weights())
    images, frame = own_part_films(run, data, split, size)
    probabilities = train.predict_images(any_size, images, tta=True)
    intervals = metrics.bootstrap_intervals(frame["label"].to_numpy(), probabilities,
                                            frame["patient"].to_numpy(), threshold=0.5, n_boot=1000)
    name = run_dir.name.rsplit("-seed", 1)[0]
    seed = int(run_dir.name.rsplit("-seed", 1)[1])
    return {"candidate": f"{name}-scored-at-{size}", "part": run.config["body_part"], "seed": seed, "tta": True,
            "split": split, "auroc": intervals.loc["auroc"].to_dict(), "kappa": intervals.loc["kappa"].to_dict(),
            "sensitivity": float(intervals.loc["sensitivity", "value"]),
            "specificity": float(intervals.loc["specificity", "value"]), "threshold": 0.5, "films": int(len(frame))}


def test_once(run_dir: Path, data: Path, size: int) -> dict:
    """Look at the test split once for a run scored at ``size``; refuse a second look."""
    log = HERE / "results" / "fracatlas-test.jsonl"
    record = score_split_once(run_dir, data, size, "val")
    print("validation, as a check of the scoring:", json.dumps(record), flush=True)
    earlier = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    if any(row["candidate"] == record["candidate"] and row["part"] == record["part"] for row in earlier):
        sys.exit(f"{record['candidate']} ({record['part']}) has been tested already: the test split is looked at once")
    record = score_split_once(run_dir, data, size, "test")
    record = {"candidate": record["candidate"], "part": record["part"], "seed": record["seed"], "tta": True,
              "test_auroc": record["auroc"], "test_kappa": record["kappa"], "sensitivity": record["sensitivity"],
              "specificity": record["specificity"], "threshold": 0.5, "test_films": record["films"],
              "looked": time.strftime("%Y-%m-%d %H:%M")}
    fracatlas_recipe._write_line(log, record)
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
        # The run's weights in the same network built for any input size.
        any_size = build_model(run.config["arch"], run.config["img_size"], seed=0, any_input_size=True)
        any_size.set_weights(run.model.get_weights())
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
