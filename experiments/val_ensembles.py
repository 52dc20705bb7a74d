"""Validation AUROC of runs averaged together (members of different candidates too), hand and every part.

``fracatlas_recipe.py ensemble`` averages one candidate's seeds from their saved validation
predictions (hand films only). This scores each run on the validation films of every part (flip TTA),
then averages the members' probabilities, so a whole-film model and a crop-trained one can be
compared as a pair. Validation split only.

    python experiments/val_ensembles.py real-cpu-seed42 real-cpu-seed43 real-cpu-crop-448-256-matched-seed42

Each name is a run folder under ``experiments/models/hand/``; every pair is scored, and each run
alone. Writes ``experiments/results/val-ensembles.json`` (or ``--out``'s name there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from fracture_lib import runs, train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fracatlas_recipe  # noqa: E402  (the validation films)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--part", default="hand")
    parser.add_argument("--data", type=Path, default=fracatlas_recipe.DEFAULT_DATA)
    parser.add_argument("--out", default="val-ensembles.json", help="file name under experiments/results")
    arguments = parser.parse_args()
    probabilities, labels, parts = {}, None, None
    for name in arguments.runs:
        run = runs.load_run(HERE / "models" / arguments.part / name)
        images, frame = fracatlas_recipe.all_validation_films(arguments.data, run.config["split_seed"], run.preprocess)
        probabilities[name] = pd.Series(train.predict_images(run.model, images, tta=True), index=frame["path"])
        labels = pd.Series(frame["label"].to_numpy(), index=frame["path"])
        parts = pd.Series(frame["body_part"].to_numpy(), index=frame["path"])
    own = (parts == arguments.part).to_numpy()
    rows = []
    for size in (1, 2):
        for members in itertools.combinations(arguments.runs, size):
            mean = sum(probabilities[name].loc[labels.index] for name in members) / size
            rows.append({"members": list(members), f"{arguments.part}_val_auroc": float(roc_auc_score(labels[own], mean[own])),
                         "all_parts_val_auroc": float(roc_auc_score(labels, mean))})
            print(json.dumps(rows[-1]), flush=True)
    (HERE / "results" / arguments.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
