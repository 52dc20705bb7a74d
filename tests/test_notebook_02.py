"""Notebook 02 (preprocessing, cache, pipeline speed) runs end to end through papermill."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest

from conftest import notebook_outputs, run_notebook, text_of
from fracture_lib import config, datasets
from fracture_lib.cache import build_cache
from fracture_lib.preprocess import PreprocessSettings


@pytest.mark.slow
def test_notebook_02_shows_preprocessing_cache_and_speed(tiny_demo_root: Path, tmp_path: Path) -> None:
    output_path = run_notebook("02_preprocessing", tmp_path, {
        "DATA_DIR": str(tiny_demo_root),
        "BODY_PARTS": ["elbow", "shoulder"],
        "IMG_SIZE": 48,
        "CLAHE": True,
        "SEED": 0,
        "SPLIT_SEED": 0,
        "RECIPE": {"rotation_degrees": 10.0, "brightness": 0.1},
    })
    executed = nbformat.read(output_path, as_version=4)
    outputs = notebook_outputs(executed)
    assert not [output for output in outputs if output.get("output_type") == "error"]
    text = "\n".join(text_of(output) for output in outputs)
    assert "SYNTHETIC DATA" in text
    # The parameters reached the library: the requested parts and settings.
    index = datasets.build_index(tiny_demo_root, parts=["elbow", "shoulder"], seed=0)
    assert f"{len(index):,} images of elbow, shoulder;" in text
    assert "'img_size': 48, 'clahe': True" in text
    # The first augmentation grid shows the run's own settings (from RECIPE), listed under it.
    assert "rotation_degrees" in text and "brightness" in text
    # Preprocessing examples (one row per part), two augmentation grids, the throughput chart.
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 4
    geometry = next(text_of(output) for output in outputs if "padding top / left" in text_of(output))
    assert ">elbow<" in geometry and ">shoulder<" in geometry and "hand" not in geometry
    # The cache table: the second call reused the cache the notebook built (or found).
    assert "second call reused it: True" in text
    # The cache the notebook left in config.CACHE_DIR serves exactly these settings and images.
    cache = build_cache(index, tiny_demo_root, PreprocessSettings(img_size=48, clahe=True), progress=False)
    assert cache.reused and cache.path.parent == config.CACHE_DIR
    assert cache.images.shape == (len(index), 48, 48) and np.asarray(cache.images).max() > 0
    # A throughput measurement with a speed-up over the naive loader was printed.
    assert "The pipeline delivers" in text and "x the naive loader" in text
