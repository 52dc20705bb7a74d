"""Notebook 03 trains a tiny run through papermill."""

from __future__ import annotations

from pathlib import Path

import nbformat

from conftest import run_notebook
from fracture_lib import config


def test_notebook_03_trains_and_saves(tiny_demo_root: Path, tmp_path: Path) -> None:
    output = run_notebook("03_train", tmp_path, {
        "BODY_PART": "shoulder", "TARGET": "fracture", "IMG_SIZE": 48, "EPOCHS": 1, "BATCH_SIZE": 16,
        "DATA_DIR": str(tiny_demo_root), "RUN_NAME": "notebook",
    })
    text = "\n".join(str(output_item) for cell in nbformat.read(str(output), 4).cells for output_item in cell.get("outputs", []))
    assert "SYNTHETIC DATA" in text
    assert "Best validation auroc" in text
    assert (config.MODELS_DIR / "shoulder" / "notebook" / "model.keras").is_file()
    assert "image/png" in text
