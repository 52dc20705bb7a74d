"""Measure ``predict``'s unfamiliar-input rules: false alarms on test films, flags on foreign inputs.

For one data source the script trains (or reuses) a body-part classifier and fracture models
with the default recipe (``EPOCHS`` at most), then scores every test image of those parts with ``predict`` exactly
as a user would (one image per input, routed by the classifier) and counts how often a film like
the training ones is flagged (the false-alarm rate: the three rules an input meets share a 1%
budget, a third each, set on the validation films). It also checks, on the validation films
alone, why the thresholds use a log-normal fit: half the validation films set a threshold and
the other half measure it, 200 times, for the fit and for a plain quantile. It also scores foreign inputs: random noise, and films of another
source (the synthetic demo set for a FracAtlas model, FracAtlas for a demo model, and the three
real MURA wrist films of ``../shared/real-xray-samples``, a part neither source trains on).

    python experiments/outlier_rates.py demo        # the synthetic demo set (data/demo)
    python experiments/outlier_rates.py fracatlas   # ../shared/fracatlas

Runs go to ``experiments/models/outliers-<source>/``; results to
``experiments/results/outliers-<source>.json`` (committed, quoted in docs/real-data.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fracture_lib import config, datasets, outliers, predict, synthetic
from fracture_lib.errors import FractureLibError
from fracture_lib.train import TrainConfig, train_model

HERE = Path(__file__).resolve().parent
SHARED = config.PROJECT_ROOT.parent / "shared"
SOURCES = {"demo": config.DEMO_DATA_ROOT, "fracatlas": SHARED / "fracatlas"}
# The fracture models trained per source (the parts with the most films).
FRACTURE_PARTS = {"demo": ["elbow", "hand", "shoulder"], "fracatlas": ["hand", "leg"]}
# Epochs of every run (the default recipe otherwise; early stopping may end sooner).
EPOCHS = 8
NOISE_IMAGES = 20
FOREIGN_IMAGES = 60


def _train(source: str, models_dir: Path, index) -> dict[str, float]:
    """Train the classifier and the fracture models (default recipe) unless already there; their seconds."""
    seconds = {}
    data_dir = str(SOURCES[source])
    jobs = [("body_part", TrainConfig(target=config.BODY_PART_TARGET, parts=tuple(datasets.classifier_parts(index)),
                                      data_dir=data_dir, run_name="default", epochs=EPOCHS))]
    jobs += [(part, TrainConfig(body_part=part, data_dir=data_dir, run_name="default", epochs=EPOCHS)) for part in FRACTURE_PARTS[source]]
    for name, train_config in jobs:
        if (models_dir / name / "default" / "model.keras").is_file():
            continue
        started = time.perf_counter()
        train_model(train_config, models_dir=models_dir, verbose=0)
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"trained {name} in {seconds[name]:.0f} s", flush=True)
    return seconds


def _flags(result: predict.PredictionResult) -> dict[str, bool]:
    """Which rule fired for one scored input."""
    notes = result.notes
    return {
        "any": bool(result.unfamiliar),
        "router_distance": any(note.startswith(predict.UNFAMILIAR_NOTE) and "body-part classifier" in note for note in notes),
        "router_probability": any(note.startswith(predict.UNSURE_NOTE) for note in notes),
        "fracture_distance": any(note.startswith(predict.UNFAMILIAR_NOTE) and "body-part classifier" not in note
                                 for note in notes),
    }


def _rates(predictor: predict.Predictor, paths: list[Path]) -> dict[str, object]:
    """Score each path as one input; the share flagged by each rule.

    The classifier's rules count on every input it routed, also one sent to a part without a
    fracture model (an error, but its flag stands); the fracture model's rule and "any" count
    on the inputs scored to the end.
    """
    routed_flags, scored_flags, errors, routed = [], [], 0, {}
    for path in paths:
        result = predictor.score(path)
        if result.body_part:
            routed[result.body_part] = routed.get(result.body_part, 0) + 1
            routed_flags.append(_flags(result))
        if result.error is not None and result.probability is None:
            errors += 1
            continue
        scored_flags.append(_flags(result))
    summary = {"inputs": len(paths), "routed": len(routed_flags), "scored": len(scored_flags), "errors": errors,
               "routed_to": routed}
    for rule, flags in (("any", scored_flags), ("router_distance", routed_flags), ("router_probability", routed_flags),
                        ("fracture_distance", scored_flags)):
        summary[f"flagged_{rule}"] = round(sum(flag[rule] for flag in flags) / len(flags), 4) if flags else None
    summary["flagged_any_routed"] = (round(sum(flag["any"] for flag in routed_flags) / len(routed_flags), 4)
                                     if routed_flags else None)
    return summary


def _validation_scores(predictor: predict.Predictor, name: str, source, index) -> dict[str, np.ndarray]:
    """The feature distances (and the classifier's top probabilities) of one run's validation films."""
    model = predictor.scoring_model(name)
    rows = index[index["split"] == "val"]
    if name != config.BODY_PART_TARGET:
        rows = rows[rows["body_part"] == name]
    images = []
    for path in rows["path"]:
        try:
            images.append(model.preprocess(source.root / path))
        except FractureLibError:
            continue
    outputs, features = zip(*(model.scores_and_features(np.stack(images[start:start + 64]))
                              for start in range(0, len(images), 64)))
    scores = {"distance": model.outlier_rule.distances(np.concatenate(features))}
    if name == config.BODY_PART_TARGET:
        # Lower is stranger for a probability: its negative logit puts it on the distances' side.
        top = np.clip(np.concatenate(outputs).max(axis=1), 1e-7, 1 - 1e-7)
        scores["probability"] = -np.log(top / (1 - top))
    return scores


def _split_half_rates(scores: np.ndarray, level: float, positive: bool, repeats: int = 200) -> dict[str, float]:
    """Set a threshold on one random half of the validation scores and measure it on the other.

    ``positive``: the scores are distances, fitted as they are; a probability's logit is shifted
    to start at 1 for the log-normal fit (which the rule does not use for probabilities).
    """
    rng = np.random.default_rng(0)
    shifted = scores if positive else scores - scores.min() + 1.0
    rates: dict[str, list[float]] = {"plain_quantile": [], "lognormal_fit": [], "order_statistic": []}
    for _ in range(repeats):
        order = rng.permutation(len(scores))
        fit, held_out = shifted[order[:len(order) // 2]], shifted[order[len(order) // 2:]]
        rates["plain_quantile"].append(np.mean(held_out > np.quantile(fit, 1 - level)))
        rates["lognormal_fit"].append(np.mean(held_out > outliers.lognormal_upper_threshold(fit, level)))
        rates["order_statistic"].append(np.mean(-held_out < outliers.lower_order_threshold(-fit, level)))
    return {name: round(float(np.mean(values)), 4) for name, values in rates.items()}


def _estimator_check(predictor: predict.Predictor, names: list[str], source, index) -> dict[str, object]:
    """Held-out validation flag rates of each threshold estimator, per run and rule, at 1% and a third of it."""
    check: dict[str, object] = {}
    for name in names:
        for rule, scores in _validation_scores(predictor, name, source, index).items():
            check[f"{name}/{rule}"] = {"films": int(len(scores)), **{
                f"level_{level:.4f}": _split_half_rates(scores, level, positive=rule == "distance") for level in (0.01, outliers.RULE_LEVEL)}}
            print(name, rule, check[f"{name}/{rule}"], flush=True)
    return check


def _noise_images(folder: Path) -> list[Path]:
    """Random-noise PNGs of radiograph-like sizes (seeded)."""
    rng = np.random.default_rng(0)
    paths = []
    for number in range(NOISE_IMAGES):
        path = folder / f"noise{number}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (int(rng.integers(300, 600)), int(rng.integers(300, 600))),
                                            dtype=np.uint8))
        paths.append(path)
    return paths


def _foreign_films(source: str) -> dict[str, list[Path]]:
    """Real or synthetic films of other sources than ``source``."""
    rng = np.random.default_rng(1)
    foreign = {"mura_wrist": sorted((SHARED / "real-xray-samples").rglob("*.png"))}
    other = "demo" if source == "fracatlas" else "fracatlas"
    if other == "demo":
        synthetic.ensure_demo_dataset()
    if SOURCES[other].exists():
        other_source = datasets.resolve_source(SOURCES[other])
        other_index = datasets.build_index(other_source)
        picked = other_index.iloc[rng.choice(len(other_index), size=min(FOREIGN_IMAGES, len(other_index)), replace=False)]
        foreign[other] = [other_source.root / path for path in picked["path"]]
    return foreign


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", choices=sorted(SOURCES))
    args = parser.parse_args(argv)
    if args.source == "demo":
        synthetic.ensure_demo_dataset()
    if not SOURCES[args.source].exists():
        sys.exit(f"{SOURCES[args.source]} is missing")
    models_dir = HERE / "models" / f"outliers-{args.source}"
    source = datasets.resolve_source(SOURCES[args.source])
    index = datasets.build_index(source)
    train_seconds = _train(args.source, models_dir, index)
    predictor = predict.Predictor(models_dir, run_name="default")
    parts = FRACTURE_PARTS[args.source]
    results: dict[str, object] = {"source": args.source, "train_seconds": train_seconds,
                                  "false_alarm_target": outliers.FALSE_ALARM_TARGET, "rule_level": outliers.RULE_LEVEL}
    results["estimator_check_on_validation"] = _estimator_check(predictor, [config.BODY_PART_TARGET, *parts], source, index)
    for split in ("val", "test"):
        rows = index[(index["split"] == split) & index["body_part"].isin(parts)]
        results[f"{split}_films"] = _rates(predictor, [source.root / path for path in rows["path"]])
        print(split, results[f"{split}_films"], flush=True)
    with tempfile.TemporaryDirectory() as folder:
        results["noise"] = _rates(predictor, _noise_images(Path(folder)))
    print("noise", results["noise"], flush=True)
    for name, paths in _foreign_films(args.source).items():
        results[name] = _rates(predictor, paths)
        print(name, results[name], flush=True)
    out_path = HERE / "results" / f"outliers-{args.source}.json"
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
