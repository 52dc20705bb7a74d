"""Choose a from-scratch training recipe on FracAtlas's validation split (the recipe of params/real-cpu.yaml).

Every candidate is a set of ``TrainConfig`` values on top of the defaults of ``params.yaml``. A
candidate is trained and scored on the *validation* split only; the test split is looked at with
``test``, once per finished candidate (a second look is refused), and every look is logged, so
``docs/real-data.md`` can say how many candidates reached the test split.

    python experiments/fracatlas_recipe.py train CANDIDATE [CANDIDATE ...] [--part hand]
    python experiments/fracatlas_recipe.py test CANDIDATE [--part hand]
    python experiments/fracatlas_recipe.py train CANDIDATE --seed 43     # another ensemble member
    python experiments/fracatlas_recipe.py ensemble CANDIDATE --seeds 42,43,44
    python experiments/fracatlas_recipe.py test-ensemble CANDIDATE --seeds 42,43,44
    python experiments/fracatlas_recipe.py table

Runs go to ``experiments/models/`` (not committed); results are appended to
``experiments/results/fracatlas-val.jsonl`` and ``fracatlas-test.jsonl`` (committed).
Needs ``../shared/fracatlas`` (or ``--data``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from fracture_lib import config, datasets, evaluation, runs, train
from fracture_lib.cache import build_cache
from fracture_lib.preprocess import PreprocessSettings

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"
RESULTS_DIR = HERE / "results"
TEST_LOG = RESULTS_DIR / "fracatlas-test.jsonl"
DEFAULT_DATA = config.PROJECT_ROOT.parent / "shared" / "fracatlas"

# A modern from-scratch recipe: AdamW, warm-up then cosine decay, longer patience, richer augmentation.
MODERN = {"optimizer": "adamw", "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": 2,
          "learning_rate": 2e-3, "epochs": 30, "patience": 10}
RICH_AUGMENT = {"rotation_degrees": 15.0, "zoom": 0.1, "translate": 0.05, "brightness": 0.1, "contrast": 0.2,
                "gamma": 0.2}
# The recipe of params/real-cpu.yaml until round four: pooled parts, 256 px, the whole 20-epoch schedule, EMA, TTA.
REAL_CPU = {"img_size": 256, **MODERN, **RICH_AUGMENT, "pool_parts": ("all",), "epochs": 20, "patience": 20,
            "ema_momentum": 0.99, "tta": True}

CANDIDATES: dict[str, dict] = {
    # The defaults of params.yaml (small_cnn, 128 px, Adam 3e-3, plateau schedule, patience 5).
    "default-128": {},
    "default-256": {"img_size": 256},
    "modern-256": {"img_size": 256, **MODERN},
    "modern-aug-256": {"img_size": 256, **MODERN, **RICH_AUGMENT},
    "modern-aug-ema-256": {"img_size": 256, **MODERN, **RICH_AUGMENT, "ema_momentum": 0.99},
    "modern-aug-ema-192": {"img_size": 192, **MODERN, **RICH_AUGMENT, "ema_momentum": 0.99},
    "modern-aug-320": {"img_size": 320, **MODERN, **RICH_AUGMENT},
    "modern-aug-ema-clahe-256": {"img_size": 256, **MODERN, **RICH_AUGMENT, "ema_momentum": 0.99, "clahe": True},
    "modern-aug-ema-focal-256": {"img_size": 256, **MODERN, **RICH_AUGMENT, "ema_momentum": 0.99, "loss": "focal"},
    "resnet-aug-256": {"arch": "resnet_small", "img_size": 256, **MODERN, **RICH_AUGMENT},
    # No early stopping (patience = epochs): the whole cosine schedule runs, and EMA smooths the noisy
    # validation AUROC of 123 films that otherwise picks a lucky epoch.
    "pooled-aug-ema-256": {"img_size": 256, **MODERN, **RICH_AUGMENT, "pool_parts": ("all",), "epochs": 24,
                           "patience": 24, "ema_momentum": 0.99},
    # The recipe of params/real-cpu.yaml until round four (20 epochs to fit 15 minutes), then that recipe with CLAHE.
    "real-cpu": REAL_CPU,
    "pooled-aug-ema-clahe-256": {"img_size": 256, **MODERN, **RICH_AUGMENT, "pool_parts": ("all",), "epochs": 20,
                                 "patience": 20, "ema_momentum": 0.99, "clahe": True},
    # FracAtlas's fractures cover a median 14 x 16 px at 256 px: 320 px inputs, with fewer epochs to fit 15 minutes.
    "pooled-aug-ema-320": {"img_size": 320, **MODERN, **RICH_AUGMENT, "pool_parts": ("all",), "epochs": 14,
                           "patience": 14, "ema_momentum": 0.99, "tta": True},
    # The real-cpu recipe with box supervision: a training-only head learns FracAtlas's fracture outlines.
    "real-cpu-boxes": {"img_size": 256, **MODERN, **RICH_AUGMENT, "pool_parts": ("all",), "epochs": 20,
                       "patience": 20, "ema_momentum": 0.99, "tta": True, "box_loss_weight": 1.0},
    # The cell head (the image's score is its most suspicious cell's), with and without the boxes training that map.
    "real-cpu-cells-boxes": {"img_size": 256, **MODERN, **RICH_AUGMENT, "pool_parts": ("all",), "epochs": 20,
                             "patience": 20, "ema_momentum": 0.99, "tta": True, "head": "cells", "box_loss_weight": 1.0},
    "real-cpu-cells": {"img_size": 256, **MODERN, **RICH_AUGMENT, "pool_parts": ("all",), "epochs": 20,
                       "patience": 20, "ema_momentum": 0.99, "tta": True, "head": "cells"},
    # MobileNetV2 without weights: 18.7 training images/s at 160 px on 2 cores (small_cnn at 256 px: 82),
    # so 15 minutes hold 6 pooled epochs.
    "mobilenetv2-160-pooled": {"arch": "mobilenetv2", "img_size": 160, **MODERN, **RICH_AUGMENT,
                               "pool_parts": ("all",), "epochs": 6, "warmup_epochs": 1, "patience": 6,
                               "ema_momentum": 0.99, "tta": True},
    # The same after models.FROM_SCRATCH_BATCH_NORM_MOMENTUM (0.9 instead of Keras' 0.999): the first run's
    # validation outputs were one constant (AUROC 0.500), its batch norms' statistics still near their start.
    "mobilenetv2-160-pooled-bn09": {"arch": "mobilenetv2", "img_size": 160, **MODERN, **RICH_AUGMENT,
                                    "pool_parts": ("all",), "epochs": 6, "warmup_epochs": 1, "patience": 6,
                                    "ema_momentum": 0.99, "tta": True},
    # Training on crops (fracture_lib/crops.py): films cached at 448 px (about FracAtlas's own 454 x 373),
    # 256-px crops around the fracture outlines or on the body, whole films validated; the cost of 256 px per step.
    # Its first run drew normal films' crops on the body only (crops.crop_points before normal films were
    # also cropped where fractures lie on other films); "-matched" is the same values with today's crop points.
    "real-cpu-crop-448-256": {"img_size": 448, "train_crop": 256, **MODERN, **RICH_AUGMENT, "pool_parts": ("all",),
                              "epochs": 20, "patience": 20, "ema_momentum": 0.99, "tta": True},
    "real-cpu-crop-448-256-matched": {"img_size": 448, "train_crop": 256, **MODERN, **RICH_AUGMENT,
                                      "pool_parts": ("all",), "epochs": 20, "patience": 20, "ema_momentum": 0.99,
                                      "tta": True},
    # A budget probe, not a candidate for the target: the real-cpu recipe with twice its epochs (about 26
    # minutes, past the 15-minute limit), to measure whether the time limit or the recipe caps the figure.
    "real-cpu-40-epochs": {**REAL_CPU, "epochs": 40, "patience": 40},
    # The probe's longer schedule fitted into 15 minutes by smaller films: 40 epochs at 192 px (0.56 times a
    # 256-px film's cost) and 30 epochs at 224 px (0.77 times).
    "real-cpu-192-40-epochs": {**REAL_CPU, "img_size": 192, "epochs": 40, "patience": 40},
    "real-cpu-224-30-epochs": {**REAL_CPU, "img_size": 224, "epochs": 30, "patience": 30},
    # Round five: small_cnn with a 4 x 4 patch stem (small_cnn_patch4) sees films at a larger side for
    # about small_cnn's cost at half that side, on the 40-epoch schedule of the preset.
    "real-cpu-patch4-320-40-epochs": {**REAL_CPU, "arch": "small_cnn_patch4", "img_size": 320, "epochs": 40,
                                      "patience": 40},
}


def _write_line(path: Path, record: dict) -> None:
    """Append one JSON line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def own_part_validation_films(run: runs.LoadedRun, data: Path, split: str = "val",
                              preprocess: PreprocessSettings | None = None) -> tuple:
    """The run's own part's films of ``split`` (validation by default): ``(images, frame)``.

    Preprocessed as the run saw them, or with ``preprocess`` (another input size, say).
    """
    _, subset = train.training_index(train.TrainConfig(**{key: value for key, value in run.config.items()
                                                          if key in train.TrainConfig.field_names()}))
    subset = train.own_part_rows(subset, run.config)
    return build_cache(subset, data, preprocess or run.preprocess, progress=False).select(split)


def refuse_second_look(name: str, part: str, seed: int | None = None) -> None:
    """Exit if ``name`` (``part``, and ``seed`` unless None) has looked at the test split already."""
    earlier = [json.loads(line) for line in TEST_LOG.read_text().splitlines()] if TEST_LOG.is_file() else []
    if any(row["candidate"] == name and row["part"] == part and seed in (None, row["seed"]) for row in earlier):
        which = part if seed is None else f"{part}, seed {seed}"
        sys.exit(f"{name} ({which}) has been tested already: the test split is looked at once")


def all_validation_films(data: Path, split_seed: int, preprocess) -> tuple:
    """Every part's validation films (398 on FracAtlas), preprocessed with ``preprocess``: ``(images, frame)``."""
    source = datasets.resolve_source(data)
    index = datasets.build_index(source, seed=split_seed)
    validation = index[index["split"] == "val"].reset_index(drop=True)
    return build_cache(validation, source.root, preprocess, progress=False).select("val")


def _val_aurocs(run_dir: Path, data: Path) -> tuple[float, float]:
    """Validation AUROC of the saved model without and with the flip average (images = studies here)."""
    run = runs.load_run(run_dir)
    images, frame = own_part_validation_films(run, data)
    labels = frame["label"].to_numpy()
    plain = train.predict_images(run.model, images)
    flipped = train.predict_images(run.model, images, tta=True)
    return float(roc_auc_score(labels, plain)), float(roc_auc_score(labels, flipped))


def _all_parts_val_auroc(run_dir: Path, data: Path) -> float | None:
    """Validation AUROC (flip-averaged) over every part's validation films, for a pooled run; else None.

    A pooled model trains on every part, so its validation films of every part (398 on FracAtlas,
    against the hand's 123) judge it with about half the noise; the hand figure stays the target's.
    """
    run = runs.load_run(run_dir)
    if not run.config.get("pool_parts"):
        return None
    images, frame = all_validation_films(data, run.config["split_seed"], run.preprocess)
    return float(roc_auc_score(frame["label"].to_numpy(), train.predict_images(run.model, images, tta=True)))


def train_candidate(name: str, part: str, data: Path, seed: int = config.DEFAULT_SEED) -> dict:
    """Train one candidate on ``part`` and log its validation AUROC and cost."""
    values = {"body_part": part, "data_dir": str(data), "run_name": f"{name}-seed{seed}", "seed": seed,
              **CANDIDATES[name]}
    started = time.perf_counter()
    result = train.train_model(train.TrainConfig(**values), models_dir=MODELS_DIR, verbose=2)
    minutes = (time.perf_counter() - started) / 60
    plain, flipped = _val_aurocs(result.run_dir, data)
    record = {"candidate": name, "part": part, "seed": seed, "values": CANDIDATES[name], "val_auroc": plain,
              "val_auroc_tta": flipped, "val_auroc_all_parts_tta": _all_parts_val_auroc(result.run_dir, data), "best_epoch": (result.config["best_epoch"] or 0) + 1,
              "epochs_trained": result.config["epochs_trained"], "train_minutes": round(minutes, 2),
              "train_images": result.config["images"]["train"], "run_dir": str(result.run_dir),
              "finished": time.strftime("%Y-%m-%d %H:%M")}
    _write_line(RESULTS_DIR / "fracatlas-val.jsonl", record)
    print(json.dumps(record))
    return record


def test_candidate(name: str, part: str, seed: int = config.DEFAULT_SEED) -> dict:
    """Look at the test split once for a finished candidate; refuse a second look."""
    refuse_second_look(name, part, seed)
    run_dir = runs.run_dir_for(part, f"{name}-seed{seed}", MODELS_DIR)
    result = evaluation.evaluate_run(run_dir, n_boot=1000)
    headline = result.result.to_dict()["headline"]
    record = {"candidate": name, "part": part, "seed": seed, "tta": result.run.config.get("tta", False),
              "test_auroc": headline["auroc"], "test_kappa": headline["kappa"],
              "threshold": result.result.threshold, "test_films": result.result.counts["test"]["study"]["n"],
              "looked": time.strftime("%Y-%m-%d %H:%M")}
    _write_line(TEST_LOG, record)
    print(json.dumps(record))
    return record


def _member_dirs(name: str, part: str, seeds: list[int]) -> list[Path]:
    """The run folders of an ensemble's members (one per seed; the split is the same for all)."""
    dirs = [runs.run_dir_for(part, f"{name}-seed{seed}", MODELS_DIR) for seed in seeds]
    missing = [str(path) for path in dirs if not (path / "model.keras").is_file()]
    if missing:
        sys.exit(f"train the members first: {', '.join(missing)}")
    return dirs


def _average(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One prediction table whose probability is the members' mean (rows matched by path)."""
    merged = frames[0].drop(columns="probability").copy()
    stacked = np.stack([frame.set_index("path").loc[merged["path"], "probability"].to_numpy() for frame in frames])
    merged["probability"] = stacked.mean(axis=0)
    return merged


def ensemble_val(name: str, part: str, seeds: list[int]) -> dict:
    """Validation AUROC of the mean of several seeds' predictions (from their val_predictions.csv)."""
    dirs = _member_dirs(name, part, seeds)
    frames = [pd.read_csv(path / "val_predictions.csv") for path in dirs]
    averaged = _average(frames)
    minutes = [row["train_minutes"] for row in map(json.loads, (RESULTS_DIR / "fracatlas-val.jsonl").read_text().splitlines())
               if row["candidate"] == name and row["part"] == part and row["seed"] in seeds]
    record = {"candidate": f"{name} x{len(seeds)} seeds", "part": part, "seeds": seeds,
              "val_auroc": float(roc_auc_score(averaged["label"], averaged["probability"])),
              "member_val_auroc": [float(roc_auc_score(frame["label"], frame["probability"])) for frame in frames],
              "train_minutes": round(float(sum(minutes)), 2), "finished": time.strftime("%Y-%m-%d %H:%M")}
    _write_line(RESULTS_DIR / "fracatlas-val.jsonl", record)
    print(json.dumps(record))
    return record


def ensemble_test(name: str, part: str, seeds: list[int]) -> dict:
    """Look at the test split once for an ensemble: the members' mean probability, the threshold from val."""
    label = f"{name} x{len(seeds)} seeds"
    refuse_second_look(label, part)
    evaluations = [evaluation.evaluate_run(path, n_boot=10) for path in _member_dirs(name, part, seeds)]
    val = _average([item.val_predictions for item in evaluations])
    test = _average([item.predictions for item in evaluations])
    result = evaluation.evaluate(val, test, aggregation="mean", threshold_method="fixed", n_boot=1000,
                                 seed=config.DEFAULT_SEED)
    headline = result.to_dict()["headline"]
    record = {"candidate": label, "part": part, "seed": seeds, "tta": evaluations[0].run.config.get("tta", False),
              "test_auroc": headline["auroc"], "test_kappa": headline["kappa"], "threshold": result.threshold,
              "test_films": result.counts["test"]["study"]["n"], "looked": time.strftime("%Y-%m-%d %H:%M")}
    _write_line(TEST_LOG, record)
    print(json.dumps(record))
    return record


def table() -> pd.DataFrame:
    """Every validation result so far, newest last."""
    rows = [json.loads(line) for line in (RESULTS_DIR / "fracatlas-val.jsonl").read_text().splitlines()]
    frame = pd.DataFrame(rows).reindex(columns=["candidate", "part", "seed", "val_auroc", "val_auroc_tta",
                                                "val_auroc_all_parts_tta", "best_epoch", "epochs_trained",
                                                "train_minutes"])
    return frame.round(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "test", "ensemble", "test-ensemble", "table"])
    parser.add_argument("candidates", nargs="*")
    parser.add_argument("--part", default="hand")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--seeds", default="42,43,44", help="ensemble members' seeds (ensemble, test-ensemble)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if args.action == "table":
        print(table().to_string(index=False))
        return
    for name in args.candidates:
        if name not in CANDIDATES:
            sys.exit(f"unknown candidate {name!r}: choose from {', '.join(CANDIDATES)}")
        seeds = [int(seed) for seed in args.seeds.split(",")]
        if args.action == "train":
            train_candidate(name, args.part, args.data.resolve(), args.seed)
        elif args.action == "test":
            test_candidate(name, args.part, args.seed)
        elif args.action == "ensemble":
            ensemble_val(name, args.part, seeds)
        else:
            ensemble_test(name, args.part, seeds)


if __name__ == "__main__":
    main()
