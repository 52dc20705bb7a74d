"""Tests for the unfamiliar-input rules: fitted on training features, thresholds set on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fracture_lib import outliers
from fracture_lib.errors import ModelNotFoundError


def _features(seed: int, count: int, dimensions: int = 8) -> np.ndarray:
    """Correlated Gaussian features, the same distribution for every seed."""
    mixing = np.random.default_rng(99).normal(size=(dimensions, dimensions))
    return np.random.default_rng(seed).normal(size=(count, dimensions)) @ mixing


def test_the_three_rules_of_a_routed_input_share_one_budget() -> None:
    assert outliers.RULE_LEVEL * outliers.RULES_PER_INPUT == pytest.approx(outliers.FALSE_ALARM_TARGET)
    assert outliers.fit_rule(_features(0, 50), _features(1, 50)).level == outliers.RULE_LEVEL
    with pytest.raises(ValueError, match="level must lie between 0 and 0.5"):
        outliers.fit_rule(_features(0, 50), _features(1, 50), level=0.0)


def test_distance_threshold_is_a_lognormal_tail_of_validation_and_flags_far_points() -> None:
    rule = outliers.fit_rule(_features(0, 2000), _features(1, 1000), level=0.01)
    assert rule.n_train == 2000 and rule.n_val == 1000 and rule.probability_threshold is None
    # The threshold is the log-normal fit's 99th percentile of the validation distances.
    logs = np.log(rule.distances(_features(1, 1000)))
    assert rule.distance_threshold == pytest.approx(np.exp(logs.mean() + 2.3263479 * logs.std(ddof=1)), rel=1e-6)
    # Fresh data from the training distribution is flagged, at most about as often as the level
    # (Gaussian features give chi distances, whose tail is lighter than the log-normal's).
    assert 0.0 < rule.unfamiliar(_features(2, 5000)).mean() <= 0.015
    # A lower level sets a higher threshold.
    assert outliers.fit_rule(_features(0, 2000), _features(1, 1000), level=0.001).distance_threshold > rule.distance_threshold
    # Points off the training distribution (shifted, or scaled up) are flagged.
    assert rule.unfamiliar(_features(3, 100) + 50.0).all()
    assert rule.unfamiliar(_features(4, 100) * 10.0).mean() > 0.9
    # The distance matches the Mahalanobis definition with the fitted precision.
    point = _features(5, 1)
    centred = point[0] - rule.mean
    assert rule.distances(point)[0] == pytest.approx(np.sqrt(centred @ rule.precision @ centred))


def test_lognormal_threshold_holds_its_level_where_a_plain_quantile_of_few_films_does_not() -> None:
    # Why the estimator: 120 validation films, as in FracAtlas hand; judged on fresh films.
    rng = np.random.default_rng(7)
    lognormal_rates, quantile_rates = [], []
    for _ in range(200):
        validation, fresh = rng.lognormal(2.2, 0.2, 120), rng.lognormal(2.2, 0.2, 2000)
        lognormal_rates.append(np.mean(fresh > outliers.lognormal_upper_threshold(validation, 0.01)))
        quantile_rates.append(np.mean(fresh > np.quantile(validation, 0.99)))
    assert np.mean(lognormal_rates) == pytest.approx(0.01, abs=0.002)
    assert np.mean(quantile_rates) > 0.013


def test_probability_rule_for_a_classifier() -> None:
    rng = np.random.default_rng(0)
    sure = rng.dirichlet([20.0, 1.0, 1.0], size=500)
    rule = outliers.fit_rule(_features(0, 300), _features(1, 500), val_outputs=sure, level=0.01)
    # The conformal order statistic: the floor(501 * 0.01) = 5th lowest top probability.
    assert rule.probability_threshold == np.sort(sure.max(axis=1))[4]
    assert rule.unsure(np.array([0.34, 0.99])).tolist() == [True, False]
    # Too few films for the level: the lowest one.
    assert outliers.lower_order_threshold(np.array([0.9, 0.6, 0.8]), 0.01) == 0.6
    with pytest.raises(ValueError):
        outliers.fit_rule(_features(0, 1), _features(1, 5))


def test_rule_saves_and_loads(tmp_path: Path) -> None:
    rule = outliers.fit_rule(_features(0, 200), _features(1, 100), val_outputs=np.full((100, 2), 0.5) + [0.3, -0.3])
    outliers.save_rule(rule, tmp_path)
    loaded = outliers.load_rule(tmp_path)
    np.testing.assert_array_equal(loaded.precision, rule.precision)
    assert loaded.distance_threshold == rule.distance_threshold
    assert loaded.probability_threshold == pytest.approx(0.8) and loaded.level == rule.level
    assert [path.name for path in tmp_path.iterdir()] == [outliers.OUTLIERS_FILENAME]
    assert outliers.load_rule(tmp_path / "absent") is None
    (tmp_path / outliers.OUTLIERS_FILENAME).write_bytes(b"not an npz file")
    with pytest.raises(ModelNotFoundError, match=r"cannot read .*outliers\.npz .*train the run again"):
        outliers.load_rule(tmp_path)
