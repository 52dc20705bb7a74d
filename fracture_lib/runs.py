"""The trained runs on disk: where they live, finding, loading and listing them.

A run lives in ``models/<name>/<run_name>/`` where ``<name>`` is the body part of a fracture
model and ``body_part`` for the body-part classifier. It holds ``RUN_FILES`` (written by
``train``) and, once notebook 04 or ``evaluate`` has scored it, ``evaluation.json`` with the
decision threshold chosen on its validation split. Hidden folders (``.partial-<run>``) are runs
still being trained and are never listed or loaded.

This module is the one registry of runs: ``train``, ``predict``, ``evaluate``, the ``models``
command and the notebooks all find runs here. ``RunSnapshot`` keeps the runs a report run will
replace, so that a failed ``make reports`` leaves models and published reports matching.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from fracture_lib import config
from fracture_lib.errors import ModelNotFoundError
from fracture_lib.files import remove_path, replace_path
from fracture_lib.metrics import AGGREGATIONS, DEFAULT_THRESHOLD
from fracture_lib.preprocess import PreprocessSettings

# The files of a finished run, written by ``train``.
RUN_FILES = ("model.keras", "history.csv", "config.json", "val_predictions.csv")
MODEL_FILENAME = "model.keras"
CONFIG_FILENAME = "config.json"
# Written next to the model by notebook 04 and ``evaluate`` (see ``evaluation.save_evaluation``).
EVALUATION_FILENAME = "evaluation.json"
# The columns of ``list_runs``, in the order the ``models`` command shows them.
RUN_COLUMNS = ("name", "run", "target", "arch", "img_size", "epochs_trained", "best_val_auroc",
               "best_val_accuracy", "threshold", "test_study_kappa", "test_study_auroc", "synthetic_data",
               "created", "error", "run_dir")


@dataclass
class LoadedRun:
    """A trained run ready to predict."""

    model: Any
    config: dict[str, Any]
    run_dir: Path
    preprocess: PreprocessSettings
    threshold: float
    classes: list[str]
    name: str
    # How its image probabilities become a study probability (chosen with the threshold).
    aggregation: str = "mean"


def models_root(models_dir: str | os.PathLike[str] | None = None) -> Path:
    """The models folder: ``models_dir`` resolved, or ``config.MODELS_DIR``."""
    return config.resolve_path(models_dir) if models_dir is not None else config.MODELS_DIR


def run_dir_for(name: str, run_name: str, models_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return ``models/<name>/<run_name>``."""
    return models_root(models_dir) / name / run_name


def run_names(folder: str | os.PathLike[str]) -> list[str]:
    """The complete runs in one model folder (``model.keras`` present; hidden work folders skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(child.name for child in folder.iterdir()
                  if not child.name.startswith(".") and (child / MODEL_FILENAME).is_file())


def train_command(name: str, run_name: str | None = None) -> str:
    """The command that trains the run of ``name`` (a body part or ``body_part``)."""
    if name == config.BODY_PART_TARGET:
        command = "python -m fracture_lib train --target body_part"
    else:
        command = f"python -m fracture_lib train --part {name}"
    return command + (f" --run-name {run_name}" if run_name is not None else "")


def missing_model_message(name: str, models_dir: str | os.PathLike[str] | None = None,
                          run_name: str | None = None) -> str:
    """The one-line 'no trained model' message, naming the folder and the command that trains one."""
    folder = models_root(models_dir) / name
    what = "no trained body-part classifier" if name == config.BODY_PART_TARGET else f"no trained model for {name!r}"
    if run_name is not None:
        what += f" with run name {run_name!r}"
        available = run_names(folder)
        if available:
            what += f" (runs there: {', '.join(available)})"
    extra = " or pass --part PART" if name == config.BODY_PART_TARGET else ""
    return f"{what} in {folder}: run `make reports` or `{train_command(name, run_name)}`{extra}"


def find_run(name: str, run_name: str | None = None, models_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder of run ``run_name`` of ``name`` (the most recent run when ``run_name`` is None)."""
    folder = models_root(models_dir) / name
    if run_name is not None:
        run_dir = folder / run_name
        if not (run_dir / MODEL_FILENAME).is_file():
            raise ModelNotFoundError(missing_model_message(name, models_dir, run_name))
        return run_dir
    candidates = [folder / child for child in run_names(folder)]
    if not candidates:
        raise ModelNotFoundError(missing_model_message(name, models_dir))
    return max(candidates, key=lambda run_dir: (run_dir / MODEL_FILENAME).stat().st_mtime)


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's ``config.json``; ``ModelNotFoundError`` naming the file when it is missing or unreadable."""
    path = Path(run_dir) / CONFIG_FILENAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path} is missing: {Path(run_dir)} is not a complete run, train it again") from None
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"cannot read {path} ({error}): train the run again") from None
    if not isinstance(document, dict):
        raise ModelNotFoundError(f"{path} is not a JSON object: train the run again")
    return document


def run_configs(names: Sequence[str], run_name: str | None = None,
                models_dir: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """The ``config.json`` of the run of each name that has a readable one (models are not loaded)."""
    configs = {}
    for name in names:
        try:
            configs[name] = read_config(find_run(name, run_name, models_dir))
        except ModelNotFoundError:
            continue
    return configs


def read_evaluation(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's ``evaluation.json``; ``{}`` when the run has not been evaluated.

    A file that exists but cannot be read raises ``ModelNotFoundError`` naming it: deciding at
    the default threshold instead would silently change every decision.
    """
    path = Path(run_dir) / EVALUATION_FILENAME
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(document.get("threshold", DEFAULT_THRESHOLD))
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ModelNotFoundError(f"cannot read {path} ({type(error).__name__}): run notebook 04 or "
                                 f"`python -m fracture_lib evaluate` again, or delete the file") from None
    if not 0.0 <= threshold <= 1.0:
        raise ModelNotFoundError(f"{path} holds threshold {threshold}, outside [0, 1]: evaluate the run again")
    return document


def read_threshold(run_dir: str | os.PathLike[str]) -> float:
    """The decision threshold chosen on the run's validation split, else ``DEFAULT_THRESHOLD``."""
    return float(read_evaluation(run_dir).get("threshold", DEFAULT_THRESHOLD))


def read_aggregation(run_dir: str | os.PathLike[str]) -> str:
    """The image-to-study aggregation saved with the run's threshold, else ``"mean"``."""
    saved = read_evaluation(run_dir).get("aggregation")
    return saved if saved in AGGREGATIONS else "mean"


def load_run(run_dir: str | os.PathLike[str]) -> LoadedRun:
    """Load a run's model (Keras safe mode), its configuration and its decision threshold."""
    import keras

    run_dir = Path(run_dir)
    model_path = run_dir / MODEL_FILENAME
    if not model_path.is_file():
        raise ModelNotFoundError(f"{run_dir} is not a complete run ({MODEL_FILENAME} and {CONFIG_FILENAME} "
                                 "expected): train it again")
    run_config = read_config(run_dir)
    threshold, aggregation = read_threshold(run_dir), read_aggregation(run_dir)
    try:
        model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except Exception as error:  # noqa: BLE001 - any loading failure becomes one clear line
        reason = " ".join(str(error).split())[:300]
        raise ModelNotFoundError(f"cannot load {model_path} ({type(error).__name__}: {reason}): train the run again") from None
    return LoadedRun(model=model, config=run_config, run_dir=run_dir,
                     preprocess=PreprocessSettings.from_dict(run_config["preprocess"]), threshold=threshold,
                     classes=list(run_config.get("classes", [])), name=run_config.get("name", run_dir.parent.name),
                     aggregation=aggregation)


def trained_on_synthetic_data(run: LoadedRun | dict[str, Any]) -> bool:
    """Tell whether a run was trained on the synthetic demo data (as far as its config says)."""
    from fracture_lib import synthetic

    run_config = (run if isinstance(run, dict) else run.config) or {}
    if run_config.get("synthetic_data") is not None:
        return bool(run_config["synthetic_data"])
    data_root = run_config.get("data_root")
    return bool(data_root) and synthetic.is_synthetic(Path(data_root))


def _finite(value: Any) -> float | None:
    """A finite number, else None."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _run_row(run_dir: Path) -> dict[str, Any]:
    """One row of ``list_runs``; a run whose files cannot be read gets ``error`` set, not an exception."""
    row: dict[str, Any] = {"name": run_dir.parent.name, "run": run_dir.name, "run_dir": str(run_dir), "error": None}
    try:
        run_config = read_config(run_dir)
        best = run_config.get("best") or {}
        row.update(target=run_config.get("target"), arch=run_config.get("arch"), img_size=run_config.get("img_size"),
                   epochs_trained=run_config.get("epochs_trained"), best_val_auroc=_finite(best.get("val_auroc")),
                   best_val_accuracy=_finite(best.get("val_accuracy")),
                   synthetic_data=run_config.get("synthetic_data"), created=run_config.get("created"))
        evaluation = read_evaluation(run_dir)
    except ModelNotFoundError as error:
        row["error"] = str(error)
        return row
    if evaluation:
        study = evaluation.get("study") or {}
        row.update(threshold=float(evaluation.get("threshold", DEFAULT_THRESHOLD)),
                   test_study_kappa=_finite(study.get("kappa")), test_study_auroc=_finite(study.get("auroc")))
    return row


def list_runs(models_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One row per trained run in ``models_dir`` (columns ``RUN_COLUMNS``), sorted by name and time.

    Training facts come from the run's ``config.json``; the threshold and the study-level test
    kappa and AUROC from ``evaluation.json`` when the run was evaluated. A run whose files cannot
    be read is still listed, with the reason in ``error``. Unfinished runs (hidden folders) are
    left out; with no runs the frame is empty but has the columns.
    """
    folder = models_root(models_dir)
    if not folder.is_dir():
        raise ModelNotFoundError(f"models folder {folder} does not exist: train first (`make reports` or "
                                 "`python -m fracture_lib train ...`) or pass --models FOLDER")
    rows = [_run_row(folder / name / run) for name in sorted(path.name for path in folder.iterdir() if path.is_dir())
            for run in run_names(folder / name)]
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    return runs.sort_values(["name", "created", "run"], na_position="first").reset_index(drop=True)


def _is_missing(value: Any) -> bool:
    """True for None and NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_runs_table(runs: pd.DataFrame) -> str:
    """Return the run list as a readable table (or a hint when there is none); errors follow it."""
    if runs.empty:
        return "no trained runs: run `make reports` or `python -m fracture_lib train --part elbow`"
    shown = runs.drop(columns=["run_dir", "error"]).copy()
    for column in ("best_val_auroc", "best_val_accuracy", "threshold", "test_study_kappa", "test_study_auroc"):
        shown[column] = shown[column].map(lambda value: "-" if _is_missing(value) else f"{value:.3f}")
    shown.insert(2, "status", ["error" if not _is_missing(error) else "ok" for error in runs["error"]])
    lines = [shown.astype(object).where(shown.notna(), "-").to_string(index=False)]
    lines += [f"error: {name}/{run}: {error}" for name, run, error in runs[["name", "run", "error"]].itertuples(index=False)
              if not _is_missing(error)]
    return "\n".join(lines)


def format_runs_json(runs: pd.DataFrame) -> str:
    """Return the run list as a JSON array of objects."""
    records = runs.astype(object).where(runs.notna(), None).to_dict(orient="records")
    return json.dumps(records, indent=2)


def _link_or_copy(source: str, destination: str) -> None:
    """Hard-link a file (no bytes copied), or copy it where links are not possible."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _file_identities(folder: Path) -> set[tuple[str, int, int]]:
    """(relative path, inode, size) of every file under ``folder``: equal sets mean nothing changed."""
    return {(str(path.relative_to(folder)), path.stat().st_ino, path.stat().st_size)
            for path in folder.rglob("*") if path.is_file()}


@dataclass
class RunSnapshot:
    """Run folders as they were before a report run retrains or re-evaluates them.

    ``take`` hard-links each folder's files into a hidden sibling (``.snapshot-<run>-<pid>``): no
    bytes are copied, and the run's writers never change a file in place (they write a new file
    and rename it), so the links keep the old contents. ``restore`` puts the old folders back
    and moves what the failed run wrote aside; ``discard`` drops the snapshot after a success.
    """

    saved: dict[Path, Path | None]

    @classmethod
    def take(cls, run_dirs: Sequence[str | os.PathLike[str]]) -> "RunSnapshot":
        """Snapshot every folder of ``run_dirs`` (one that does not exist yet is remembered as absent)."""
        saved: dict[Path, Path | None] = {}
        for run_dir in dict.fromkeys(Path(path) for path in run_dirs):
            if not run_dir.is_dir():
                saved[run_dir] = None
                continue
            snapshot = run_dir.with_name(f".snapshot-{run_dir.name}-{os.getpid()}")
            remove_path(snapshot)
            shutil.copytree(run_dir, snapshot, copy_function=_link_or_copy, symlinks=True)
            saved[run_dir] = snapshot
        return cls(saved)

    def restore(self, aside_dir: str | os.PathLike[str]) -> list[Path]:
        """Put every snapshot back; a changed or new run folder moves to ``aside_dir/<name>/<run>``.

        Returns the folders moved aside (what the failed run trained, kept for inspection).
        """
        moved = []
        for run_dir, snapshot in self.saved.items():
            unchanged = (snapshot is not None and run_dir.is_dir()
                         and _file_identities(run_dir) == _file_identities(snapshot))
            if run_dir.exists() and not unchanged:
                destination = Path(aside_dir) / run_dir.parent.name / run_dir.name
                remove_path(destination)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(run_dir), str(destination))
                moved.append(destination)
            if snapshot is not None:
                replace_path(snapshot, run_dir)
        return moved

    def discard(self) -> None:
        """Delete the snapshots (the run they guarded succeeded)."""
        for snapshot in self.saved.values():
            if snapshot is not None:
                remove_path(snapshot)
