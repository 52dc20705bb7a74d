"""Score a trained run's validation films at other input sizes than it trained at (no retraining).

A compact network is fully convolutional, so the weights of a run trained at 256 px can score films
resized to 224-352 px. Models trained with random resized crops often do better when tested a
little larger than trained (Touvron et al., "Fixing the train-test resolution discrepancy", 2019);
this measures whether FracAtlas's validation films say so. Validation split only, flip TTA.

    python experiments/test_resolution.py experiments/models/hand/real-cpu-seed42 experiments/models/hand/real-cpu-seed43
    python experiments/test_resolution.py experiments/models/hand/real-cpu-192-40-epochs-seed42 \
        --sizes 192 224 256 288 --out test-resolution-192.json

Writes ``experiments/results/test-resolution.json`` (or ``--out``'s name there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sklearn.metrics import roc_auc_score

from fracture_lib import runs, train
from fracture_lib.models import build_model
from fracture_lib.preprocess import PreprocessSettings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fracatlas_recipe  # noqa: E402  (the validation films)
SIZES = (224, 256, 288, 320, 352)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=fracatlas_recipe.DEFAULT_DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="input sizes to score at")
    parser.add_argument("--out", default="test-resolution.json", help="file name under experiments/results")
    arguments = parser.parse_args()
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
