"""Notebook 03 trains a tiny run through papermill."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from conftest import TINY_IMG_SIZE, run_notebook
from fracture_lib import config


@pytest.mark.slow
def test_notebook_03_trains_and_saves(tiny_demo_root: Path, tmp_path: Path) -> None:
    output = run_notebook("03_train", tmp_path, {
        "BODY_PART": "shoulder", "TARGET": "fracture", "IMG_SIZE": TINY_IMG_SIZE, "EPOCHS": 1, "BATCH_SIZE": 16,
        "DATA_DIR": str(tiny_demo_root), "RUN_NAME": "notebook",
        # Every other training setting arrives in RECIPE and must reach the run (clahe did not once).
        "RECIPE": {"clahe": True, "optimizer": "adamw", "weight_decay": 0.0001, "schedule": "cosine", "tta": True,
                   "split_seed": 7, "brightness": 0.1},
    })
    outputs = [item for cell in nbformat.read(str(output), 4).cells for item in cell.get("outputs", [])]
    text = "\n".join(str(item) for item in outputs)
    assert "SYNTHETIC DATA" in text
    # The data table (classes as columns) and the class weights are shown before training.
    assert "abnormal" in text and "loss weight" in text
    assert "Best validation auroc" in text
    # Two figures: the class counts and the learning curves.
    assert sum("image/png" in item.get("data", {}) for item in outputs) == 2
    run_dir = config.MODELS_DIR / "shoulder" / "notebook"
    assert (run_dir / "model.keras").is_file()
    assert str(run_dir) in text
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["img_size"] == TINY_IMG_SIZE and saved["epochs"] == 1 and saved["data_root"] == str(tiny_demo_root)
    assert saved["clahe"] is True and saved["preprocess"]["clahe"] is True and saved["optimizer"] == "adamw"
    assert (saved["schedule"], saved["tta"], saved["split_seed"], saved["augment"]["brightness"]) == ("cosine", True, 7, 0.1)
    # The report lists every setting of the run.
    assert "split_seed" in text and "ema_momentum" in text
