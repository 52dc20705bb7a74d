"""A trained fracture run evaluated on a split of a data source: internal or external validation.

``evaluate_run`` is the one implementation behind ``python -m fracture_lib evaluate`` and
notebook 04. It loads the run, rebuilds the index of the source with the run's own split
settings, scores the split through the preprocessing cache, and measures every metric at image
and study level with 95% bootstrap intervals over patients (``metrics.evaluate``). The decision
threshold is always chosen on the run's **own** validation predictions (``val_predictions.csv``,
written when it was trained) and applied unchanged to the evaluated split.

- **Internal**: the source is the one the run was trained on. Its index must give the same rows,
  labels and split as at training time (the index fingerprint in ``config.json``); otherwise the
  evaluation is refused, because the "test" split might then hold training patients.
- **External** (``external=True``): any other source, for example a MURA-trained hand model on
  FracAtlas's hand films. It is labelled ``external`` everywhere, and its data never move the
  threshold. ``split="all"`` scores every image of an external source.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fracture_lib import config, datasets, metrics
from fracture_lib.errors import DataLayoutError, FractureLibError, ParameterError
from fracture_lib.files import write_text_atomically

EVALUATED_SPLITS = ("test", "val", "train", "all")
EVALUATIONS_DIRNAME = "evaluations"


@dataclass
class RunEvaluation:
    """What ``evaluate_run`` measured, with everything needed to show or save it."""

    run: Any
    source: datasets.DataSource
    split: str
    external: bool
    result: metrics.EvaluationResult
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
        return {
            "body_part": run_config.get("body_part"), "run_name": self.run.run_dir.name, "run_dir": str(self.run.run_dir),
            "validation": self.label, "source": {**self.source.to_dict(), "name": self.source.name},
            "trained_on": run_config.get("data_source") or {"root": run_config.get("data_root")},
            "split": self.split, "threshold_chosen_on": "the run's own validation split",
            **self.result.to_dict(),
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


def evaluation_defaults(run: Any) -> tuple[str, str]:
    """The aggregation and threshold method of the run's ``evaluation.json`` (notebook 04), else mean/fixed."""
    path = Path(run.run_dir) / metrics.EVALUATION_FILENAME
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        saved = {}
    aggregation = saved.get("aggregation") if saved.get("aggregation") in metrics.AGGREGATIONS else "mean"
    method = saved.get("threshold_method") if saved.get("threshold_method") in metrics.THRESHOLD_METHODS else "fixed"
    return aggregation, method


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
    """Evaluate a fracture run (a ``train.LoadedRun`` or its folder) on ``split`` of ``data``.

    ``data=None`` means the source the run was trained on. ``aggregation`` and
    ``threshold_method`` default to the run's ``evaluation.json`` (else ``mean`` and ``fixed``).
    See the module docstring for internal and external validation.
    """
    from fracture_lib import train

    if not isinstance(run, train.LoadedRun):
        run = train.load_run(run)
    if run.config.get("target") != config.FRACTURE_TARGET:
        raise ParameterError(f"{run.run_dir} is the body-part classifier: evaluate a fracture model (--part PART)")
    if split not in EVALUATED_SPLITS:
        raise ParameterError(f"split {split!r} is unknown: choose {', '.join(EVALUATED_SPLITS)}")
    if split == "all" and not external:
        raise ParameterError("--split all scores every image, training images included: use it with --external only")
    default_aggregation, default_method = evaluation_defaults(run)
    aggregation = aggregation or default_aggregation
    threshold_method = threshold_method or default_method
    if aggregation not in metrics.AGGREGATIONS:
        raise ParameterError(f"aggregation {aggregation!r} is unknown: choose {' or '.join(metrics.AGGREGATIONS)}")
    if threshold_method not in metrics.THRESHOLD_METHODS:
        raise ParameterError(f"threshold method {threshold_method!r} is unknown: choose {' or '.join(metrics.THRESHOLD_METHODS)}")

    source = trained_source(run) if data is None else datasets.resolve_source(data)
    rows = _part_rows(run, source)
    _check_provenance(run, source, rows, external)
    if split == "all":
        rows = rows.assign(split="all")
    predictions = train.predict_split(run, rows, source, split=split, cache_dir=cache_dir)
    val_predictions = pd.read_csv(Path(run.run_dir) / "val_predictions.csv")
    result = metrics.evaluate(val_predictions, predictions, aggregation=aggregation, threshold_method=threshold_method,
                              n_boot=n_boot, seed=seed)
    return RunEvaluation(run, source, split, external, result, val_predictions, predictions, rows)


def default_output_path(evaluation: RunEvaluation) -> Path:
    """``models/<part>/<run>/evaluations/<internal|external>-<source>-<split>.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", evaluation.source.name.lower()).strip("-")
    return Path(evaluation.run.run_dir) / EVALUATIONS_DIRNAME / f"{evaluation.label}-{slug}-{evaluation.split}.json"


def save_run_evaluation(evaluation: RunEvaluation, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the evaluation as JSON (atomically); the run's ``evaluation.json`` is left as it is."""
    target = Path(path) if path is not None else default_output_path(evaluation)
    document = metrics.json_ready(evaluation.to_dict())
    return write_text_atomically(target, json.dumps(document, indent=2, allow_nan=False) + "\n")
