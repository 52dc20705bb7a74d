"""Tests for the body-part classifier's metrics and the two-stage pipeline (``routing``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fracture_lib import routing
from fracture_lib.errors import ParameterError
from fracture_lib.preprocess import PreprocessSettings
from fracture_lib.runs import LoadedRun


def test_classifier_metrics_and_study_routing() -> None:
    classes = ["elbow", "hand", "shoulder"]
    predictions = pd.DataFrame({
        "study": ["a", "a", "b", "c"],
        "label": ["elbow", "elbow", "hand", "shoulder"],
        "prob_elbow": [0.6, 0.2, 0.1, 0.5],
        "prob_hand": [0.3, 0.7, 0.8, 0.1],
        "prob_shoulder": [0.1, 0.1, 0.1, 0.4],
    })
    studies = routing.aggregate_body_part_studies(predictions, classes)
    # Study a: mean elbow 0.4, hand 0.5 -> routed to hand.
    assert studies["predicted"].tolist() == ["hand", "hand", "elbow"]
    assert studies.loc[0, "probability"] == pytest.approx(0.5)
    result = routing.classifier_metrics(studies["label"], studies["predicted"], classes)
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["confusion"].loc["elbow", "hand"] == 1 and result["confusion"].loc["hand", "hand"] == 1
    assert result["recall"]["hand"] == 1.0 and result["recall"]["shoulder"] == 0.0


def test_two_stage_accuracy() -> None:
    studies = pd.DataFrame({
        "study": ["e1", "e2", "h1", "h2"],
        "body_part": ["elbow", "elbow", "hand", "hand"],
        "routed_part": ["elbow", "hand", "hand", "shoulder"],
        "label": [1, 0, 1, 0],
    })
    scores = pd.DataFrame({
        "study": ["e1", "e2", "e2", "h1", "h2"],
        "model_part": ["elbow", "elbow", "hand", "hand", "hand"],
        "probability": [0.9, 0.2, 0.8, 0.7, 0.1],
    })
    result = routing.two_stage_accuracy(studies, scores, {"elbow": 0.5, "hand": 0.5})
    assert result["routing_accuracy"] == 0.5
    # True part: all four right. Two-stage: e2 misrouted to hand (0.8, wrong), h2 to a part without a model.
    assert result["true_part_accuracy"] == 1.0 and result["true_part_unscored"] == 0
    assert result["two_stage_accuracy"] == 0.5 and result["two_stage_unscored"] == 1
    assert result["true_part_kappa"] == 1.0
    assert result["per_study"]["two_stage_decision"].isna().tolist() == [False, False, False, True]


def test_two_stage_from_predictions() -> None:
    classes = ["elbow", "hand"]
    # Two elbow studies and one hand study; the router sends elbow study e2 to the hand model.
    router = pd.DataFrame({"study": ["e1", "e2", "h1"], "label": ["elbow", "elbow", "hand"],
                           "prob_elbow": [0.9, 0.3, 0.1], "prob_hand": [0.1, 0.7, 0.9]})
    images = pd.DataFrame({"study": ["e1", "e1", "e2", "h1"], "label": [1, 1, 0, 1]})
    fracture = {"elbow": images.assign(probability=[0.7, 0.5, 0.1, 0.2]),
                "hand": images.assign(probability=[0.1, 0.1, 0.6, 0.9])}
    result = routing.two_stage_from_predictions(router, classes, fracture, {"elbow": 0.5, "hand": 0.5})
    # True part: e1 (0.6, right), e2 (0.1, right), h1 (0.9, right). Two-stage: e2 gets 0.6, wrong.
    assert result["n"] == 3 and result["routing_accuracy"] == pytest.approx(2 / 3)
    assert result["true_part_accuracy"] == 1.0 and result["two_stage_accuracy"] == pytest.approx(2 / 3)
    only_elbow = routing.two_stage_from_predictions(router, classes, fracture, {"elbow": 0.5, "hand": 0.5},
                                                    parts=["elbow"])
    assert only_elbow["n"] == 2


def test_two_stage_decides_each_part_with_its_own_aggregation() -> None:
    classes = ["elbow", "hand"]
    router = pd.DataFrame({"study": ["e1", "e1"], "label": ["elbow", "elbow"],
                           "prob_elbow": [0.9, 0.8], "prob_hand": [0.1, 0.2]})
    # One abnormal elbow study: mean 0.5 is below the 0.6 threshold, max 0.9 is above it.
    fracture = {"elbow": pd.DataFrame({"study": ["e1", "e1"], "label": [1, 1], "probability": [0.9, 0.1]})}
    by_mean = routing.two_stage_from_predictions(router, classes, fracture, {"elbow": 0.6})
    by_max = routing.two_stage_from_predictions(router, classes, fracture, {"elbow": 0.6}, {"elbow": "max"})
    assert by_mean["two_stage_accuracy"] == 0.0 and by_max["two_stage_accuracy"] == 1.0
    with pytest.raises(ParameterError, match="aggregation 'median' of elbow"):
        routing.two_stage_from_predictions(router, classes, fracture, {"elbow": 0.6}, {"elbow": "median"})


def _fake_run(target: str, part: str | None, classes: list[str], threshold: float = 0.5,
              aggregation: str = "mean") -> LoadedRun:
    """A run without a model: ``predict_split`` is replaced in the test that uses it."""
    run_config = {"target": target, "body_part": part, "classes": classes}
    return LoadedRun(model=None, config=run_config, run_dir=Path(part or "body_part"),
                     preprocess=PreprocessSettings(img_size=32), threshold=threshold, classes=classes,
                     name=part or "body_part", aggregation=aggregation)


def test_evaluate_two_stage_scores_a_misrouted_study_with_the_routed_model(monkeypatch) -> None:
    index = pd.DataFrame({
        "path": ["e1/a.png", "e1/b.png", "e2/a.png", "h1/a.png", "s1/a.png"],
        "study": ["e1", "e1", "e2", "h1", "s1"],
        "patient": ["p1", "p1", "p2", "p3", "p4"],
        "body_part": ["elbow", "elbow", "elbow", "hand", "shoulder"],
        "label": [1, 1, 0, 1, 0],
        "split": "test",
    })
    # The classifier sends elbow study e2 to the hand model and hand study h1 to the elbow model.
    routed = {"e1": "elbow", "e2": "hand", "h1": "elbow", "s1": "shoulder"}
    # Each fracture model's probability for each study (e1's two views differ, for max vs mean).
    fracture_scores = {"elbow": {"e1/a.png": 0.9, "e1/b.png": 0.2, "e2/a.png": 0.1, "h1/a.png": 0.2},
                       "hand": {"e2/a.png": 0.8, "h1/a.png": 0.9}}
    asked: dict[str, list[str]] = {}

    def fake_predict_split(run, rows, data_root, split="test", cache_dir=None, parts=None):
        rows = rows[rows["split"] == split]
        if run.config["target"] == "body_part":
            frame = rows[["path", "study", "body_part"]].rename(columns={"body_part": "label"})
            for name in run.classes:
                frame[f"prob_{name}"] = [0.9 if routed[study] == name else 0.05 for study in frame["study"]]
            frame["predicted"] = frame["study"].map(routed)
            return frame.reset_index(drop=True)
        part = run.config["body_part"]
        asked[part] = sorted(rows["path"])
        assert parts is not None and set(rows["body_part"]) <= set(parts)
        return rows.assign(probability=[fracture_scores[part][path] for path in rows["path"]]).reset_index(drop=True)

    monkeypatch.setattr("fracture_lib.train.predict_split", fake_predict_split)
    router = _fake_run("body_part", None, ["elbow", "hand", "shoulder"])
    fracture_runs = {"elbow": _fake_run("fracture", "elbow", ["normal", "abnormal"], 0.5, "max"),
                     "hand": _fake_run("fracture", "hand", ["normal", "abnormal"], 0.5)}
    two_stage = routing.evaluate_two_stage(router, fracture_runs, index, "unused")
    # The elbow model was asked about its own studies and the hand study routed to it, and vice versa.
    assert asked["elbow"] == ["e1/a.png", "e1/b.png", "e2/a.png", "h1/a.png"]
    assert asked["hand"] == ["e2/a.png", "h1/a.png"]
    result = two_stage.result
    # Studies of parts with a model: e1, e2, h1 (s1's shoulder has none). Routed right: e1 only.
    assert result["n"] == 3 and result["routing_accuracy"] == pytest.approx(1 / 3)
    # True part: e1 max 0.9 (right), e2 0.1 (right), h1 0.9 (right). Two stages: e1 right,
    # e2 scored 0.8 by the hand model (wrong), h1 scored 0.2 by the elbow model (wrong).
    assert result["true_part_accuracy"] == 1.0 and result["true_part_unscored"] == 0
    assert result["two_stage_accuracy"] == pytest.approx(1 / 3) and result["two_stage_unscored"] == 0
    assert two_stage.aggregations == {"elbow": "max", "hand": "mean"}
    assert two_stage.router_metrics()["study"]["n"] == 4
    assert "two stages" in two_stage.table().index[1]
    # Without fracture models only the classifier is measured.
    router_only = routing.evaluate_two_stage(router, {}, index, "unused")
    assert router_only.result == {} and router_only.router_metrics()["image"]["n"] == 5
    with pytest.raises(ParameterError, match="train a fracture model"):
        router_only.table()
    with pytest.raises(ParameterError, match="not a body-part classifier"):
        routing.evaluate_two_stage(fracture_runs["elbow"], fracture_runs, index, "unused")
