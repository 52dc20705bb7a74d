"""Tests of the demo-versus-real comparison: body mask, histograms, the Wasserstein distance."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fracture_lib import realism


def _film(level: int) -> np.ndarray:
    """A dark film with a bright rectangle (the body) at ``level`` plus a little texture."""
    film = np.full((200, 160), 10, np.uint8)
    film[40:160, 40:120] = level + (np.indices((120, 80)).sum(axis=0) % 5).astype(np.uint8)
    return film


def test_distance_is_zero_for_the_same_films_and_the_shift_for_shifted_ones() -> None:
    first = realism.body_histogram([_film(100), _film(120)])
    assert realism.wasserstein_grey(first, first) == pytest.approx(0.0)
    shifted = realism.body_histogram([_film(130), _film(150)])
    assert realism.wasserstein_grey(first, shifted) == pytest.approx(30.0, abs=0.5)
    with pytest.raises(ValueError, match="256 bins"):
        realism.wasserstein_grey(first[:10], shifted)


def test_body_mask_keeps_the_body_and_drops_the_background() -> None:
    mask = realism.body_mask(_film(120))
    assert mask[100, 80] and not mask[5, 5]
    assert 0.25 < mask.mean() < 0.4  # the rectangle is 30% of the film


def test_compare_with_real_reads_paths_and_handles_no_real_films(tmp_path: Path) -> None:
    for number in range(4):
        cv2.imwrite(str(tmp_path / f"real{number}.png"), _film(140))
    real = realism.find_films(tmp_path)
    assert len(real) == 4 and realism.find_films(tmp_path / "missing") == []
    comparison = realism.compare_with_real([_film(100)] * 5, real, shown=3)
    assert (comparison.demo_count, comparison.real_count) == (5, 4)
    assert len(comparison.demo_films) == len(comparison.real_films) == 3
    assert comparison.distance == pytest.approx(40.0, abs=0.5)
    alone = realism.compare_with_real([_film(100)], [])
    assert alone.distance is None and alone.real_histogram is None
