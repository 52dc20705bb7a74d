"""Writing result files and folders safely, and where native libraries' stderr goes.

A crash or an error half-way through never leaves a truncated file in place of an earlier good
one: the rename (``os.replace``) is atomic on one file system.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


@contextlib.contextmanager
def native_stderr_to(log_path: str | os.PathLike[str]) -> Iterator[None]:
    """Send everything written to this process's stderr file descriptor (and its children's) to ``log_path``.

    Child processes (the report kernels) inherit the descriptor, so TensorFlow's C++ start-up
    notices land in the log instead of between the progress lines; errors still surface as
    exceptions.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling; return the path.

    Missing parent folders are created; the temporary file is removed if anything fails.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def replace_path(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move the finished file or folder ``staging`` to ``target``, replacing what was there.

    The earlier ``target`` is renamed aside first and removed only once the new one is in place,
    so at every moment ``target`` is either the complete old version or the complete new one.
    Both must be on one file system (keep ``staging`` a sibling of ``target``).
    """
    staging, target = Path(staging), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    retired = target.with_name(f".{target.name}.retired-{os.getpid()}")
    remove_path(retired)
    if target.exists() or target.is_symlink():
        os.replace(target, retired)
    try:
        os.replace(staging, target)
    except OSError:
        if retired.exists() and not target.exists():
            os.replace(retired, target)  # put the old version back
        raise
    remove_path(retired)
    return target


def remove_path(path: str | os.PathLike[str]) -> None:
    """Delete a file or folder if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def json_ready(value: Any) -> Any:
    """``value`` with NumPy numbers made plain, paths made strings and NaN/inf made ``None``, recursively."""
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomically(path: str | os.PathLike[str], document: Mapping[str, Any] | list) -> Path:
    """Write ``document`` (made ``json_ready``) as indented JSON through a temporary sibling."""
    return write_text_atomically(path, json.dumps(json_ready(document), indent=2, allow_nan=False) + "\n")
