"""Evaluating a fracture run: every metric with its interval, written to disk; internal and external validation.

``evaluate`` turns a run's validation and test predictions into ``EvaluationResult`` (the threshold
chosen on validation, every metric of ``metrics`` at image and study level with patient-bootstrap
intervals); ``save_evaluation`` writes it.

``evaluate_run`` is the one implementation behind ``python -m fracture_lib evaluate`` and
notebook 04. It loads the run, rebuilds the index of the source with the run's own split
settings, scores the split through the preprocessing cache, and measures every metric at image
and study level with 95% bootstrap intervals over patients (``evaluate``). The decision
threshold is always chosen on the run's **own** validation predictions (``val_predictions.csv``,
written when it was trained) and applied unchanged to the evaluated split.

- **Internal**: the source is the one the run was trained on. Its index must give the same rows,
  labels and split as at training time (the index fingerprint in ``config.json``); otherwise the
  evaluation is refused, because the "test" split might then hold training patients.
- **External** (``external=True``): any other source, for example a MURA-trained hand model on
  FracAtlas's hand films. It is labelled ``external`` everywhere, and its data never move the
  threshold. ``split="all"`` scores every image of an external source.

Files written by ``save_evaluation`` (read by ``predict``, ``models``, ``reports`` and notebook 05)::

    models/<part>/<run>/evaluation.json
    {
      "body_part": "elbow", "run_name": "default", "run_dir": str,
      "threshold": 0.5,                 # decide "abnormal" when probability >= threshold
      "threshold_method": "fixed" | "youden",   # chosen on the validation split
      "aggregation": "mean" | "max",    # image -> study probability
      "split": "test",                  # the split the headline metrics were measured on
      "study": {"kappa": float, "auroc": float, "sensitivity": float,
                "specificity": float, "accuracy": float},   # test split, study level
      "metrics_file": str,              # the full report below
      "created": ISO 8601 time
    }

    reports/metrics/<part>.json  (config.METRICS_DIR)
    {
      "body_part", "run_name", "run_dir", "threshold", "threshold_method", "aggregation",
      "n_bootstrap", "seed", "confidence": 0.95, "n_bins": 10, "created",
      "headline": {"split": "test", "level": "study", "threshold": float,
                   "kappa": {"value", "ci_low", "ci_high"}, "auroc": {...},
                   "sensitivity": {...}, "specificity": {...}, "accuracy": {...}},
      "metrics": {"<split>": {"<level>": {"<metric>": {"value", "ci_low", "ci_high"}}}},
      "counts": {"<split>": {"<level>": {"n", "n_positive", "tp", "fp", "tn", "fn"}}},
      "extra": {...}                    # anything the caller adds (e.g. the pointing game)
    }

``split`` is ``val`` or ``test``, ``level`` is ``image`` or ``study``, ``metric`` one of
``METRIC_NAMES``. Values that are undefined (for example AUROC on a single class) are ``null``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from fracture_lib import config, datasets, runs
from fracture_lib.errors import DataLayoutError, FractureLibError, ParameterError
from fracture_lib.files import json_ready, write_json_atomically
from fracture_lib.metrics import (AGGREGATIONS, COUNT_NAMES, DEFAULT_N_BINS, DEFAULT_THRESHOLD, HEADLINE_METRICS,
                                  LEVELS, METRIC_NAMES, TABLE_COLUMNS, THRESHOLD_METHODS, aggregate_studies,
                                  binary_metrics, bootstrap_intervals, check_columns, choose_threshold, format_interval)

EVALUATED_SPLITS = ("test", "val", "train", "all")
EVALUATIONS_DIRNAME = "evaluations"


@dataclass
class EvaluationResult:
    """Everything ``evaluate`` measured: the tidy table, the threshold and the scored items.

    ``predictions[split][level]`` are the val/test image and study tables with ``predicted``
    (0/1 at the threshold) added; ``counts[split][level]`` the confusion counts.
    """

    table: pd.DataFrame
    threshold: float
    threshold_method: str
    aggregation: str
    n_boot: int
    seed: int
    confidence: float
    n_bins: int
    predictions: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def metric(self, name: str, level: str = "study", split: str = "test") -> float:
        """The point estimate of one metric."""
        rows = self.table[(self.table["metric"] == name) & (self.table["level"] == level)
                          & (self.table["split"] == split)]
        if rows.empty:
            raise ParameterError(f"no metric {name!r} at {level} level on the {split} split")
        return float(rows["value"].iloc[0])

    def wide(self, split: str = "test") -> pd.DataFrame:
        """One row per metric, ``value [ci_low, ci_high]`` columns per level: the readable table."""
        rows = self.table[self.table["split"] == split]
        text = rows.apply(lambda row: format_interval(row["value"], row["ci_low"], row["ci_high"]), axis=1)
        wide = rows.assign(text=text).pivot(index="metric", columns="level", values="text")
        return wide.reindex(index=list(METRIC_NAMES), columns=[level for level in LEVELS if level in wide.columns])

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready summary (``metrics``, ``counts``, ``headline`` and the settings)."""
        metrics: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
        for row in self.table.itertuples(index=False):
            metrics.setdefault(row.split, {}).setdefault(row.level, {})[row.metric] = {
                "value": json_ready(row.value), "ci_low": json_ready(row.ci_low), "ci_high": json_ready(row.ci_high),
            }
        headline: dict[str, Any] = {"split": "test", "level": "study", "threshold": self.threshold}
        for name in HEADLINE_METRICS:
            headline[name] = metrics.get("test", {}).get("study", {}).get(name)
        return {
            "threshold": self.threshold,
            "threshold_method": self.threshold_method,
            "aggregation": self.aggregation,
            "n_bootstrap": self.n_boot,
            "seed": self.seed,
            "confidence": self.confidence,
            "n_bins": self.n_bins,
            "headline": headline,
            "metrics": metrics,
            "counts": self.counts,
        }


def _level_tables(predictions: pd.DataFrame, aggregation: str) -> dict[str, pd.DataFrame]:
    """The image table (as given) and the study table of one split."""
    check_columns(predictions, ("study", "label", "probability"), "the prediction table")
    images = predictions.reset_index(drop=True).copy()
    images["label"] = images["label"].astype(int)
    return {"image": images, "study": aggregate_studies(images, aggregation)}


def _clusters(frame: pd.DataFrame) -> np.ndarray:
    """The bootstrap unit of each row: the patient when known, else the study."""
    return frame["patient" if "patient" in frame.columns else "study"].to_numpy()


def evaluate(val_predictions: pd.DataFrame, test_predictions: pd.DataFrame, aggregation: str = "mean",
             threshold_method: str = "fixed", n_boot: int = 1000, seed: int = config.DEFAULT_SEED,
             fixed_threshold: float = DEFAULT_THRESHOLD, confidence: float = 0.95, n_bins: int = DEFAULT_N_BINS) -> EvaluationResult:
    """Evaluate one fracture run: threshold on val (study level), every metric with CIs on both splits.

    Each prediction table has one row per image with ``study``, ``label``, ``probability`` (and
    ``patient``, the bootstrap unit). The threshold is chosen on the validation split's study
    probabilities and applied unchanged to images and studies of both splits.
    """
    if aggregation not in AGGREGATIONS:
        raise ParameterError(f"unknown aggregation {aggregation!r}: choose {' or '.join(AGGREGATIONS)}")
    splits = {"val": _level_tables(val_predictions, aggregation), "test": _level_tables(test_predictions, aggregation)}
    val_studies = splits["val"]["study"]
    threshold = choose_threshold(val_studies["label"], val_studies["probability"], threshold_method, fixed_threshold)
    rows, counts = [], {}
    for split, levels in splits.items():
        counts[split] = {}
        for level, frame in levels.items():
            intervals = bootstrap_intervals(frame["label"], frame["probability"], _clusters(frame), threshold,
                                            n_boot, seed, confidence, n_bins)
            rows.extend({"split": split, "level": level, "metric": metric, **values}
                        for metric, values in intervals.to_dict(orient="index").items())
            frame["predicted"] = (frame["probability"] >= threshold).astype(int)
            point = binary_metrics(frame["label"], frame["probability"], threshold, n_bins)
            counts[split][level] = {"n": int(len(frame)), "n_positive": int(frame["label"].sum()),
                                    **{name: point[name] for name in COUNT_NAMES}}
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return EvaluationResult(table, threshold, threshold_method, aggregation, n_boot, seed, confidence, n_bins,
                            splits, counts)


def save_evaluation(result: EvaluationResult, run_dir: str | os.PathLike[str],
                    metrics_path: str | os.PathLike[str] | None = None,
                    extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<run_dir>/evaluation.json`` and the full metrics file (see the module docstring).

    ``metrics_path`` defaults to ``config.METRICS_DIR / <part>.json``, the part being the run's
    parent folder name. ``extra`` (JSON-ready) is stored under ``"extra"``. Returns both paths.
    """
    run_dir = Path(run_dir)
    body_part, run_name = run_dir.parent.name, run_dir.name
    metrics_path = Path(metrics_path) if metrics_path is not None else config.METRICS_DIR / f"{body_part}.json"
    created = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    identity = {"body_part": body_part, "run_name": run_name, "run_dir": str(run_dir)}
    document = {**identity, **result.to_dict(), "extra": dict(extra or {}), "created": created}
    headline = document["headline"]
    evaluation = {
        **identity,
        "threshold": result.threshold,
        "threshold_method": result.threshold_method,
        "aggregation": result.aggregation,
        "split": "test",
        "study": {name: (headline[name] or {}).get("value") for name in HEADLINE_METRICS},
        "metrics_file": str(metrics_path),
        "created": created,
    }
    write_json_atomically(metrics_path, document)
    write_json_atomically(run_dir / runs.EVALUATION_FILENAME, evaluation)
    return run_dir / runs.EVALUATION_FILENAME, metrics_path


@dataclass
class RunEvaluation:
    """What ``evaluate_run`` measured, with everything needed to show or save it."""

    run: Any
    source: datasets.DataSource
    split: str
    external: bool
    result: EvaluationResult
    val_predictions: pd.DataFrame
    predictions: pd.DataFrame
    index: pd.DataFrame

    @property
    def label(self) -> str:
        """``internal`` or ``external``."""
        return "external" if self.external else "internal"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready document: the run, the data, the threshold and every metric with its interval."""
        run_config = self.run.config
        result = self.result.to_dict()
        if self.split != "test":
            # The result names the scored split "test"; the document names it as scored (for
            # "val" that replaces the run's validation split by the same films).
            for key in ("metrics", "counts"):
                tables = {split: table for split, table in result[key].items() if split != "test"}
                result[key] = {**tables, self.split: result[key]["test"]}
            result["headline"] = {**result["headline"], "split": self.split}
        return {
            "body_part": run_config.get("body_part"), "run_name": self.run.run_dir.name, "run_dir": str(self.run.run_dir),
            "validation": self.label, "source": {**self.source.to_dict(), "name": self.source.name},
            "trained_on": run_config.get("data_source") or {"root": run_config.get("data_root")},
            "split": self.split, "threshold_chosen_on": "the run's own validation split",
            **result,
            "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }

    def summary(self) -> str:
        """The printed report: what was evaluated, the threshold and the metrics table."""
        counts = self.result.counts["test"]
        header = (f"{self.label} validation of {self.run.run_dir} on {self.source.name} ({self.source.location}), "
                  f"split {self.split}: {counts['image']['n']} images, {counts['study']['n']} studies "
                  f"({counts['study']['n_positive']} abnormal)")
        threshold = (f"threshold {self.result.threshold:.3f} ({self.result.threshold_method}, chosen on the run's own "
                     f"validation split; aggregation {self.result.aggregation}); 95% intervals from "
                     f"{self.result.n_boot} patient resamples")
        table = self.result.wide("test").rename_axis(None)
        return "\n".join([header, threshold, table.to_string()])


def _same_path(first: object, second: object) -> bool:
    """Tell whether two recorded paths name the same file or folder."""
    try:
        return Path(str(first)).resolve() == Path(str(second)).resolve()
    except (OSError, RuntimeError):
        return str(first) == str(second)


def trained_source(run: Any) -> datasets.DataSource:
    """The data source a run was trained on, as its ``config.json`` records it."""
    recorded = run.config.get("data_source") or {}
    location = recorded.get("location") or run.config.get("data_root")
    if not location:
        raise FractureLibError(f"{run.run_dir}/config.json does not say what data the run was trained on: retrain it")
    return datasets.resolve_source(location)


def evaluation_defaults(run: runs.LoadedRun) -> tuple[str, str]:
    """The aggregation and threshold method of the run's ``evaluation.json`` (notebook 04), else mean/fixed."""
    method = runs.read_evaluation(run.run_dir).get("threshold_method")
    return run.aggregation, method if method in THRESHOLD_METHODS else "fixed"


def _part_rows(run: Any, source: datasets.DataSource) -> pd.DataFrame:
    """The index rows of the run's body part in ``source``, split as the run's own settings split them."""
    run_config = run.config
    # Runs made before split_seed existed split with their seed.
    split_seed = run_config.get("split_seed", run_config.get("seed", config.DEFAULT_SEED))
    index = datasets.build_index(source, seed=int(split_seed),
                                 val_fraction=float(run_config.get("val_fraction", config.DEFAULT_VAL_FRACTION)),
                                 keep_truncated=bool(run_config.get("keep_truncated", False)))
    part = run_config["body_part"]
    rows = index[index["body_part"] == part].reset_index(drop=True)
    if rows.empty:
        present = ", ".join(datasets.sort_parts(index["body_part"].unique()))
        raise DataLayoutError(f"{source.location} has no {part} images (present: {present}): "
                              f"evaluate the {part} model on a source that holds {part} films")
    return rows


def _check_provenance(run: Any, source: datasets.DataSource, rows: pd.DataFrame, external: bool) -> None:
    """Refuse internal validation on other data, and 'external' validation on the run's own data."""
    own = trained_source(run)
    same_source = own.kind == source.kind and _same_path(own.location, source.location)
    recorded = run.config.get("index_fingerprint")
    same_index = same_source and recorded == datasets.index_fingerprint(rows)
    if external and same_index:
        raise ParameterError(f"{source.location} is the data {run.run_dir} was trained on: drop --external "
                             "(its test split is internal validation)")
    if external:
        return
    if not same_source:
        raise DataLayoutError(
            f"{run.run_dir} was trained on {own.name} ({own.location}), not on {source.location}: pass --external "
            "to score it as external validation (the threshold stays the run's own), or train on this source")
    if not same_index:
        raise DataLayoutError(
            f"{source.location} no longer gives the index {run.run_dir} was trained on (fingerprint "
            f"{datasets.index_fingerprint(rows)}, the run recorded {recorded}): its test split may hold training "
            "patients; retrain the run, or pass --external to score it as external data")


def evaluate_run(run: Any, data: str | os.PathLike[str] | datasets.DataSource | None = None, split: str = "test",
                 external: bool = False, aggregation: str | None = None, threshold_method: str | None = None,
                 n_boot: int = 1000, seed: int = config.DEFAULT_SEED,
                 cache_dir: str | os.PathLike[str] | None = None) -> RunEvaluation:
    """Evaluate a fracture run (a ``runs.LoadedRun`` or its folder) on ``split`` of ``data``.

    ``data=None`` means the source the run was trained on. ``aggregation`` and
    ``threshold_method`` default to the run's ``evaluation.json`` (else ``mean`` and ``fixed``).
    See the module docstring for internal and external validation.
    """
    from fracture_lib import train

    if not isinstance(run, runs.LoadedRun):
        run = runs.load_run(run)
    if run.config.get("target") != config.FRACTURE_TARGET:
        raise ParameterError(f"{run.run_dir} is the body-part classifier: evaluate a fracture model (--part PART)")
    if split not in EVALUATED_SPLITS:
        raise ParameterError(f"split {split!r} is unknown: choose {', '.join(EVALUATED_SPLITS)}")
    if split == "all" and not external:
        raise ParameterError("--split all scores every image, training images included: use it with --external only")
    default_aggregation, default_method = evaluation_defaults(run)
    aggregation = aggregation or default_aggregation
    threshold_method = threshold_method or default_method
    if aggregation not in AGGREGATIONS:
        raise ParameterError(f"aggregation {aggregation!r} is unknown: choose {' or '.join(AGGREGATIONS)}")
    if threshold_method not in THRESHOLD_METHODS:
        raise ParameterError(f"threshold method {threshold_method!r} is unknown: choose {' or '.join(THRESHOLD_METHODS)}")

    source = trained_source(run) if data is None else datasets.resolve_source(data)
    rows = _part_rows(run, source)
    _check_provenance(run, source, rows, external)
    if split == "all":
        rows = rows.assign(split="all")
    predictions = train.predict_split(run, rows, source, split=split, cache_dir=cache_dir)
    val_predictions = pd.read_csv(Path(run.run_dir) / "val_predictions.csv")
    result = evaluate(val_predictions, predictions, aggregation=aggregation, threshold_method=threshold_method,
                              n_boot=n_boot, seed=seed)
    return RunEvaluation(run, source, split, external, result, val_predictions, predictions, rows)


def default_output_path(evaluation: RunEvaluation) -> Path:
    """``models/<part>/<run>/evaluations/<internal|external>-<source>-<split>.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", evaluation.source.name.lower()).strip("-")
    return Path(evaluation.run.run_dir) / EVALUATIONS_DIRNAME / f"{evaluation.label}-{slug}-{evaluation.split}.json"


def save_run_evaluation(evaluation: RunEvaluation, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the evaluation as JSON (atomically); the run's ``evaluation.json`` is left as it is."""
    target = Path(path) if path is not None else default_output_path(evaluation)
    return write_json_atomically(target, evaluation.to_dict())
