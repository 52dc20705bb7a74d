"""Notebook 06 (try your image) runs end to end through papermill on the tiny runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from conftest import notebook_text, run_notebook
from fracture_lib import config


@pytest.mark.slow
def test_notebook_06_scores_the_default_demo_image(tiny_runs, tiny_demo_root: Path, tmp_path: Path) -> None:
    # The one-epoch classifier may route the image to any part: give every part a model.
    models_dir = tmp_path / "models"
    shutil.copytree(tiny_runs["body_part"], models_dir / config.BODY_PART_TARGET / "tiny")
    for part in ("elbow", "hand", "shoulder"):
        shutil.copytree(tiny_runs["elbow"], models_dir / part / "tiny")
    output_path = run_notebook("06_try_your_image", tmp_path, {
        "IMAGE_PATH": None,
        "MODELS_DIR": str(models_dir),
        "RUN_NAME": "tiny",
        "DATA_DIR": str(tiny_demo_root),
    })
    executed = nbformat.read(output_path, as_version=4)
    text = notebook_text(executed)
    # The default image is an abnormal elbow image of the given data root.
    assert "XR_ELBOW" in text and "positive" in text and str(tiny_demo_root) in text
    assert "SYNTHETIC DATA" in text
    assert "classifier" in text and "threshold" in text  # the results table and the threshold note
    figures = [output for cell in executed.cells for output in cell.get("outputs", [])
               if "image/png" in output.get("data", {})]
    assert len(figures) == 2  # the radiograph, then the model input beside its Grad-CAM overlay
