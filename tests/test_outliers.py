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


def test_distance_threshold_flags_the_chosen_share_of_validation_and_far_points() -> None:
    rule = outliers.fit_rule(_features(0, 2000), _features(1, 1000))
    assert rule.n_train == 2000 and rule.n_val == 1000 and rule.probability_threshold is None
    # By construction 1% of validation is flagged; fresh data from the same distribution about as often.
    assert rule.unfamiliar(_features(1, 1000)).mean() == pytest.approx(outliers.FALSE_ALARM_TARGET, abs=0.002)
    assert rule.unfamiliar(_features(2, 5000)).mean() == pytest.approx(outliers.FALSE_ALARM_TARGET, abs=0.01)
    # Points off the training distribution (shifted, or scaled up) are flagged.
    assert rule.unfamiliar(_features(3, 100) + 50.0).all()
    assert rule.unfamiliar(_features(4, 100) * 10.0).mean() > 0.9
    # The distance matches the Mahalanobis definition with the fitted precision.
    point = _features(5, 1)
    centred = point[0] - rule.mean
    assert rule.distances(point)[0] == pytest.approx(np.sqrt(centred @ rule.precision @ centred))


def test_probability_rule_for_a_classifier() -> None:
    rng = np.random.default_rng(0)
    sure = rng.dirichlet([20.0, 1.0, 1.0], size=500)
    rule = outliers.fit_rule(_features(0, 300), _features(1, 500), val_outputs=sure)
    assert rule.probability_threshold == pytest.approx(np.quantile(sure.max(axis=1), outliers.FALSE_ALARM_TARGET))
    assert rule.unsure(np.array([0.34, 0.99])).tolist() == [True, False]
    with pytest.raises(ValueError):
        outliers.fit_rule(_features(0, 1), _features(1, 5))


def test_rule_saves_and_loads(tmp_path: Path) -> None:
    rule = outliers.fit_rule(_features(0, 200), _features(1, 100), val_outputs=np.full((100, 2), 0.5) + [0.3, -0.3])
    outliers.save_rule(rule, tmp_path)
    loaded = outliers.load_rule(tmp_path)
    np.testing.assert_array_equal(loaded.precision, rule.precision)
    assert loaded.distance_threshold == rule.distance_threshold
    assert loaded.probability_threshold == pytest.approx(0.8)
    assert [path.name for path in tmp_path.iterdir()] == [outliers.OUTLIERS_FILENAME]
    assert outliers.load_rule(tmp_path / "absent") is None
    (tmp_path / outliers.OUTLIERS_FILENAME).write_bytes(b"not an npz file")
    with pytest.raises(ModelNotFoundError, match=r"cannot read .*outliers\.npz .*train the run again"):
        outliers.load_rule(tmp_path)
