"""The body-part classifier and the two-stage pipeline: route each study, then score it.

``predict`` routes a new study to the fracture model of the body part the classifier names (the
argmax of its images' mean class probabilities). ``evaluate_two_stage`` measures that pipeline
on a split: every study is scored by the fracture model its route picked (also when the
classifier sent it to another part's model), with that run's own preprocessing, test-time
augmentation, image-to-study aggregation and decision threshold, and compared with scoring it
by its true part's model. A study routed to a part without a fracture model counts as wrong.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix

from fracture_lib import config, runs
from fracture_lib.errors import ParameterError
from fracture_lib.metrics import AGGREGATIONS, aggregate_studies, binary_metrics, check_columns, divide_or_nan


def _probability_columns(predictions: pd.DataFrame, classes: Sequence[str]) -> list[str]:
    """The ``prob_<class>`` columns of a classifier prediction table, checked."""
    columns = [f"prob_{name}" for name in classes]
    check_columns(predictions, columns, "the body-part prediction table")
    return columns


def aggregate_body_part_studies(predictions: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """One row per study of the body-part classifier: mean class probabilities, then the argmax.

    This is how ``predict`` routes a study folder. Returns ``study``, ``label`` (the true part),
    ``predicted``, ``probability`` (of the predicted part) and ``prob_<class>`` columns.
    """
    columns = _probability_columns(predictions, classes)
    check_columns(predictions, ("study", "label"), "the body-part prediction table")
    grouped = predictions.groupby("study", sort=True)
    studies = grouped[columns].mean()
    best = studies.to_numpy().argmax(axis=1)
    result = pd.DataFrame({
        "study": studies.index,
        "label": grouped["label"].first().to_numpy(),
        "predicted": np.asarray(classes, dtype=object)[best],
        "probability": studies.to_numpy().max(axis=1),
    })
    return pd.concat([result, studies.reset_index(drop=True)], axis=1)


def classifier_metrics(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix (rows: true class)."""
    label_array = np.asarray(labels, dtype=object)
    predicted_array = np.asarray(predicted, dtype=object)
    if label_array.size == 0:
        raise ParameterError("no predictions to evaluate: the split is empty")
    matrix = confusion_matrix(label_array, predicted_array, labels=list(classes))
    confusion = pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))
    recall = pd.Series(divide_or_nan(np.diag(matrix), matrix.sum(axis=1)), index=list(classes), name="recall")
    present = recall.dropna()
    return {
        "n": int(label_array.size),
        "accuracy": float(accuracy_score(label_array, predicted_array)),
        "balanced_accuracy": float(present.mean()) if len(present) else math.nan,
        "recall": recall,
        "confusion": confusion,
    }


def two_stage_accuracy(studies: pd.DataFrame, scores: pd.DataFrame, thresholds: Mapping[str, float]) -> dict[str, Any]:
    """Study-level accuracy of router-then-fracture-model against using the true part's model.

    ``studies``: one row per study with ``study``, ``body_part`` (true part), ``routed_part``
    (the classifier's choice) and ``label``. ``scores``: ``study``, ``model_part``,
    ``probability`` (the study probability given by that part's fracture model); each study
    needs a score from the model of its true part and of its routed part. ``thresholds``:
    part -> threshold. A study routed to a part without a model counts as a mistake
    (``unscored``). Returns ``n``, ``routing_accuracy``, ``unscored``, ``accuracy`` and ``kappa``
    for both routes, and ``per_study`` (a frame with both decisions).
    """
    check_columns(studies, ("study", "body_part", "routed_part", "label"), "the study table")
    check_columns(scores, ("study", "model_part", "probability"), "the score table")
    lookup = scores.drop_duplicates(["study", "model_part"]).set_index(["study", "model_part"])["probability"]
    per_study = studies[["study", "body_part", "routed_part", "label"]].reset_index(drop=True).copy()
    for route, column in (("true_part", "body_part"), ("two_stage", "routed_part")):
        keys = pd.MultiIndex.from_arrays([per_study["study"], per_study[column]])
        probability = lookup.reindex(keys).to_numpy()
        threshold = per_study[column].map(lambda part: thresholds.get(part, np.nan)).to_numpy(dtype=float)
        scored = np.isfinite(probability) & np.isfinite(threshold)
        decision = np.where(scored, (np.nan_to_num(probability) >= np.nan_to_num(threshold)).astype(float), np.nan)
        per_study[f"{route}_probability"] = probability
        per_study[f"{route}_decision"] = decision
    result: dict[str, Any] = {
        "n": int(len(per_study)),
        "routing_accuracy": float((per_study["body_part"] == per_study["routed_part"]).mean()) if len(per_study) else math.nan,
        "per_study": per_study,
    }
    labels = per_study["label"].astype(int).to_numpy()
    for route in ("true_part", "two_stage"):
        decision = per_study[f"{route}_decision"].to_numpy()
        scored = np.isfinite(decision)
        # An unscored study is a wrong answer: the pipeline could not give one.
        correct = scored & (np.nan_to_num(decision, nan=-1) == labels)
        result[f"{route}_unscored"] = int((~scored).sum())
        result[f"{route}_accuracy"] = float(correct.mean()) if len(labels) else math.nan
        filled = np.where(scored, decision, 1 - labels).astype(int)
        result[f"{route}_kappa"] = binary_metrics(labels, filled, 0.5)["kappa"] if len(labels) else math.nan
    return result


def two_stage_from_predictions(router_predictions: pd.DataFrame, classes: Sequence[str],
                               fracture_predictions: Mapping[str, pd.DataFrame], thresholds: Mapping[str, float],
                               aggregations: Mapping[str, str] | None = None,
                               parts: Sequence[str] | None = None) -> dict[str, Any]:
    """``two_stage_accuracy`` from image-level prediction tables of one split.

    ``router_predictions``: the body-part classifier's table (``label`` = true part,
    ``prob_<class>``). ``fracture_predictions``: part -> that part's fracture model's table on
    every image it may be asked about (its own part's studies and those routed to it), with
    ``label`` the study's fracture label. Each part's table is turned into studies with that
    run's ``aggregations[part]`` (default ``mean``), so every run is decided as its threshold was
    chosen. Studies are limited to true parts in ``parts`` (default: the parts with a model).
    """
    if not fracture_predictions:
        raise ParameterError("no fracture model predictions: train a fracture model first")
    aggregations = dict(aggregations or {})
    for part, method in aggregations.items():
        if method not in AGGREGATIONS:
            raise ParameterError(f"aggregation {method!r} of {part} is unknown: choose {' or '.join(AGGREGATIONS)}")
    router_studies = aggregate_body_part_studies(router_predictions, classes)
    fracture_studies = {part: aggregate_studies(frame, aggregations.get(part, "mean"))
                        for part, frame in fracture_predictions.items()}
    scores = pd.concat([frame[["study", "probability"]].assign(model_part=part)
                        for part, frame in fracture_studies.items()], ignore_index=True)
    labels = pd.concat([frame[["study", "label"]] for frame in fracture_studies.values()]).drop_duplicates("study")
    studies = (router_studies[["study", "label", "predicted"]]
               .rename(columns={"label": "body_part", "predicted": "routed_part"})
               .merge(labels, on="study", how="inner"))
    studies = studies[studies["body_part"].isin(list(parts or fracture_predictions))].reset_index(drop=True)
    return two_stage_accuracy(studies, scores, thresholds)


@dataclass
class TwoStageEvaluation:
    """What ``evaluate_two_stage`` measured on one split."""

    split: str
    classes: list[str]
    parts: list[str]
    thresholds: dict[str, float]
    aggregations: dict[str, str]
    router_predictions: pd.DataFrame
    router_studies: pd.DataFrame
    fracture_predictions: dict[str, pd.DataFrame]
    result: dict[str, Any] = field(default_factory=dict)

    def router_metrics(self) -> dict[str, dict[str, Any]]:
        """The classifier's accuracy per image and per study (``classifier_metrics``)."""
        predictions, studies = self.router_predictions, self.router_studies
        return {"image": classifier_metrics(predictions["label"], predictions["predicted"], self.classes),
                "study": classifier_metrics(studies["label"], studies["predicted"], self.classes)}

    def table(self) -> pd.DataFrame:
        """Study accuracy, kappa and unscored studies of both routes, readable."""
        result = self.result
        if not result:
            raise ParameterError("no fracture model was evaluated: train a fracture model first")
        return pd.DataFrame({
            "fracture model chosen by": ["the true body part", "the body-part classifier (two stages)"],
            "study accuracy": [f"{result['true_part_accuracy']:.1%}", f"{result['two_stage_accuracy']:.1%}"],
            "kappa": [f"{result['true_part_kappa']:.3f}", f"{result['two_stage_kappa']:.3f}"],
            "studies without a model": [result["true_part_unscored"], result["two_stage_unscored"]],
        }).set_index("fracture model chosen by")


def evaluate_two_stage(router: runs.LoadedRun, fracture_runs: Mapping[str, runs.LoadedRun], index: pd.DataFrame,
                       data_root: str | os.PathLike[str] | Any, split: str = "test",
                       cache_dir: str | os.PathLike[str] | None = None) -> TwoStageEvaluation:
    """Evaluate router-then-fracture-model on ``split`` of ``index`` (see the module docstring).

    ``router`` is the body-part classifier's run, ``fracture_runs`` part -> fracture run. Each
    study is scored by the model of its routed part and by the model of its true part; each
    run scores with its own settings and decides with its own aggregation and threshold. With no
    fracture runs only the classifier is measured (``result`` is empty).
    """
    from fracture_lib import train

    if router.config.get("target") != config.BODY_PART_TARGET:
        raise ParameterError(f"{router.run_dir} is not a body-part classifier: pass the run trained with --target body_part")
    classes = list(router.classes)
    router_predictions = train.predict_split(router, index, data_root, split=split, cache_dir=cache_dir)
    router_studies = aggregate_body_part_studies(router_predictions, classes)
    routed_to = dict(zip(router_studies["study"], router_studies["predicted"]))
    split_rows = index[(index["split"] == split) & index["body_part"].isin(classes)]
    fracture_predictions, thresholds, aggregations = {}, {}, {}
    for part, run in fracture_runs.items():
        # The model scores its own part's studies and every study the classifier sent to it.
        asked = split_rows[(split_rows["body_part"] == part) | (split_rows["study"].map(routed_to) == part)]
        if asked.empty:
            continue
        fracture_predictions[part] = train.predict_split(run, asked, data_root, split=split, cache_dir=cache_dir,
                                                         parts=sorted(asked["body_part"].unique()))
        thresholds[part] = float(run.threshold)
        aggregations[part] = run.aggregation
    if fracture_runs and not fracture_predictions:
        raise ParameterError(f"the {split} split holds no studies of {', '.join(fracture_runs)}")
    result = (two_stage_from_predictions(router_predictions, classes, fracture_predictions, thresholds, aggregations,
                                         parts=list(fracture_runs)) if fracture_predictions else {})
    return TwoStageEvaluation(split, classes, list(fracture_runs), thresholds, aggregations, router_predictions, router_studies,
                              fracture_predictions, result)
