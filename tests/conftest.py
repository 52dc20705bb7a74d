"""Shared fixtures: a tiny synthetic MURA, tiny trained runs, and a notebook runner.

Generated outputs (models, caches, reports, the demo set) go to a temporary folder for the whole
session, so the tests never touch the user's ``models/`` or ``reports/``. The environment
variables are set before ``fracture_lib`` is imported, and papermill kernels inherit them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="fracture-tests-"))
os.environ["FRACTURE_MODELS_DIR"] = str(_SESSION_DIR / "models")
os.environ["FRACTURE_CACHE_DIR"] = str(_SESSION_DIR / "cache")
os.environ["FRACTURE_REPORTS_DIR"] = str(_SESSION_DIR / "reports")
os.environ["FRACTURE_DEMO_DIR"] = str(_SESSION_DIR / "demo")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from fracture_lib import config  # noqa: E402

# Small enough to keep `make test` fast, large enough for every split, part and label to occur.
TINY_PATIENTS = 150
TINY_IMG_SIZE = 64


@pytest.fixture(scope="session")
def session_dir() -> Path:
    """The session's temporary folder (models, cache, reports live under it)."""
    return _SESSION_DIR


@pytest.fixture(scope="session")
def tiny_demo_root(session_dir: Path) -> Path:
    """A tiny synthetic MURA data root (contains ``MURA-v1.1/``), generated once per session."""
    from fracture_lib.synthetic import generate_demo_dataset

    return generate_demo_dataset(session_dir / "tiny-demo", patients=TINY_PATIENTS, seed=0)


@pytest.fixture
def no_boxes_demo_root(tiny_demo_root: Path, tmp_path: Path) -> Path:
    """A copy of the tiny demo set without its fracture boxes, as real MURA has none."""
    import shutil

    copy = tmp_path / "no-boxes"
    shutil.copytree(tiny_demo_root, copy)
    (copy / config.MURA_DIRNAME / "fracture_boxes.csv").unlink()
    return copy


@pytest.fixture(scope="session")
def tiny_runs(tiny_demo_root: Path) -> dict[str, Path]:
    """Tiny trained runs (one epoch, 64 px): the elbow fracture model and the body-part classifier.

    Returns ``{"elbow": run_dir, "body_part": run_dir}``; both live in ``config.MODELS_DIR``
    under the run name ``tiny``.
    """
    from fracture_lib.train import TrainConfig, train_model

    runs: dict[str, Path] = {}
    for target, part in ((config.FRACTURE_TARGET, "elbow"), (config.BODY_PART_TARGET, None)):
        train_config = TrainConfig(
            target=target,
            body_part=part,
            arch="small_cnn",
            img_size=TINY_IMG_SIZE,
            epochs=1,
            batch_size=16,
            data_dir=str(tiny_demo_root),
            run_name="tiny",
            seed=0,
            split_seed=0,
        )
        result = train_model(train_config, models_dir=config.MODELS_DIR, verbose=0)
        runs[part or config.BODY_PART_TARGET] = result.run_dir
    return runs


def run_notebook(name: str, output_dir: Path, parameters: dict) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill on the project kernel; return the output path."""
    import papermill

    output_path = output_dir / f"{name}.ipynb"
    papermill.execute_notebook(
        str(config.NOTEBOOKS_DIR / f"{name}.ipynb"),
        str(output_path),
        parameters=parameters,
        kernel_name=config.KERNEL_NAME,
        cwd=str(config.NOTEBOOKS_DIR),
        progress_bar=False,
    )
    return output_path


def notebook_outputs(notebook) -> list[dict]:
    """Every output of an executed notebook, cell by cell."""
    return [output for cell in notebook.cells for output in cell.get("outputs", [])]


def text_of(output: dict) -> str:
    """The stream, plain-text, markdown and HTML content of one output."""
    data = output.get("data", {})
    return output.get("text", "") + data.get("text/plain", "") + data.get("text/markdown", "") + data.get("text/html", "")


def notebook_text(notebook) -> str:
    """All text-like outputs of an executed notebook, joined."""
    return "\n".join(text_of(output) for output in notebook_outputs(notebook))
