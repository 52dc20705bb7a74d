"""An interrupted training run's work folder, and when it may be resumed.

``train_model`` trains in ``models/<name>/.partial-<run>/``: Keras's BackupAndRestore state
(``backup/``), the best weights so far, ``history.csv`` and ``resume.json``. An interruption
leaves that folder behind and the next ``train`` of the same run name continues from the last
finished epoch, but only when the training settings and data are those it was started with:
``resume.json`` holds a fingerprint of both. Resuming a 128 px run at 224 px, or on other
images, would silently mix two trainings into one model, so a mismatch is refused with a
one-line error that names the settings that differ and offers ``--restart``.

Only ``epochs`` may change between the attempts (a run may be given more epochs to finish).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from fracture_lib.errors import ParameterError
from fracture_lib.files import write_json_atomically

BACKUP_DIRNAME = "backup"
BEST_WEIGHTS = "best.weights.h5"
HISTORY_FILENAME = "history.csv"
RESUME_FILENAME = "resume.json"
# Settings that may differ between an interrupted attempt and the one that resumes it.
RESUMABLE_CHANGES = ("epochs",)


def resume_settings(train_settings: Mapping[str, Any], training_fingerprint: str,
                    global_batch_size: int) -> dict[str, Any]:
    """What must match for a run to resume: its settings (but ``epochs``), its data and its global batch."""
    settings = {key: value for key, value in train_settings.items() if key not in RESUMABLE_CHANGES}
    return {**settings, "training_fingerprint": training_fingerprint, "global_batch_size": int(global_batch_size)}


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A sha256 of the settings, independent of key order."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_history(path: Path) -> pd.DataFrame:
    """Read CSVLogger's file, keeping the last row of each epoch (a resumed run may repeat one)."""
    if not path.is_file():
        return pd.DataFrame(columns=["epoch"])
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").reset_index(drop=True)


def _differences(saved: Mapping[str, Any], wanted: Mapping[str, Any], limit: int = 4) -> str:
    """``key old -> new`` for the settings that differ, the first ``limit`` of them."""
    wanted = json.loads(json.dumps(wanted, default=str))
    keys = sorted(key for key in set(saved) | set(wanted) if saved.get(key) != wanted.get(key))
    shown = [f"{key} {saved.get(key)!r} -> {wanted.get(key)!r}" if key != "training_fingerprint"
             else "the training images or labels" for key in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_resumable(work_dir: Path, settings: Mapping[str, Any], restart: bool = False) -> bool:
    """Tell whether ``work_dir`` holds an interrupted attempt to resume with ``settings``.

    No attempt (or ``restart``): False, and ``prepare_work_dir`` starts afresh. An attempt with
    the same fingerprint: True. An attempt with other settings, or one without ``resume.json``
    (written by an older version), raises ``ParameterError`` naming what differs.
    """
    if restart or not (work_dir / BACKUP_DIRNAME).is_dir():
        return False
    hint = ("pass --restart to discard it and train from the first epoch (or delete the folder), "
            "or train with the settings it was started with to resume it")
    path = work_dir / RESUME_FILENAME
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ParameterError(f"{work_dir} holds an interrupted run whose settings are unknown "
                             f"({RESUME_FILENAME} is missing or unreadable): {hint}") from None
    if saved.get("fingerprint") == fingerprint(settings):
        return True
    differences = _differences(saved.get("settings") or {}, settings)
    raise ParameterError(f"{work_dir} holds an interrupted run with other settings ({differences}): {hint}")


def prepare_work_dir(work_dir: Path, settings: Mapping[str, Any], monitor: str, resume: bool) -> float | None:
    """Create the work folder; return the best monitored value so far when resuming, else None.

    Without ``resume`` the folder is emptied. ``resume.json`` is (re)written either way, so an
    interruption of this attempt can be resumed in turn.
    """
    if not resume:
        shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(work_dir / RESUME_FILENAME, {"fingerprint": fingerprint(settings), "settings": dict(settings)})
    earlier = read_history(work_dir / HISTORY_FILENAME)
    if monitor not in earlier or earlier[monitor].dropna().empty or not (work_dir / BEST_WEIGHTS).is_file():
        return None
    return float(earlier[monitor].max())


def finish_work_dir(work_dir: Path) -> None:
    """Remove what only an interrupted attempt needs (the backup, the best weights, ``resume.json``)."""
    (work_dir / BEST_WEIGHTS).unlink(missing_ok=True)
    (work_dir / RESUME_FILENAME).unlink(missing_ok=True)
    shutil.rmtree(work_dir / BACKUP_DIRNAME, ignore_errors=True)
