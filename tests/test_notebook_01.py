"""Notebook 01 (data exploration) runs end to end through papermill on the tiny demo set."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from conftest import notebook_text, run_notebook
from fracture_lib import datasets


@pytest.mark.slow
def test_notebook_01_explores_the_demo_set(tiny_demo_root: Path, tmp_path: Path) -> None:
    # Two stand-ins for real films (the project's tests do not read ../shared).
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    for number, path in enumerate(sorted(tiny_demo_root.rglob("image1.png"))[:2]):
        shutil.copy(path, real_dir / f"film{number}.png")
    output_path = run_notebook("01_data_exploration", tmp_path, {
        "DATA_DIR": str(tiny_demo_root),
        "BODY_PARTS": ["elbow", "hand"],
        "SEED": 0,
        "SPLIT_SEED": 0,
        "REAL_SAMPLES_DIR": str(real_dir),
    })
    executed = nbformat.read(output_path, as_version=4)
    text = notebook_text(executed)
    assert "SYNTHETIC DATA" in text
    # The parameters reached the index: only the requested parts, with the notebook's seed.
    index = datasets.build_index(tiny_demo_root, parts=["elbow", "hand"], seed=0)
    assert f"{len(index):,} images, {index['study'].nunique():,} studies" in text
    assert "body parts: elbow, hand\n" in text
    assert "Leakage check passed" in text
    assert f"Index fingerprint: {datasets.index_fingerprint(index)}" in text
    # The split summary table lists the requested parts and all three splits, and no other part.
    summary_html = next(output["data"]["text/html"] for cell in executed.cells for output in cell.get("outputs", [])
                        if "patients" in output.get("data", {}).get("text/html", "")
                        and "images" in output.get("data", {}).get("text/html", ""))
    for word in ("elbow", "hand", "train", "val", "test"):
        assert f">{word}<" in summary_html
    assert "shoulder" not in summary_html
    figures = [output for cell in executed.cells for output in cell.get("outputs", [])
               if "image/png" in output.get("data", {})]
    # Composition, views, sizes, intensities, sample grid, demo beside real, split summary.
    assert len(figures) == 7
    assert "Wasserstein distance of grey levels inside the body" in text
    assert "and 2 real films" in text
    errors = [output for cell in executed.cells for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors
