"""Tests for the file helpers every writer shares: the atomic folder swap and JSON writing."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from fracture_lib import files


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "file.txt").write_text(text)
    return path


def test_replace_path_swaps_a_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = _folder(tmp_path / "run", "old")
    staging = _folder(tmp_path / ".run.partial", "new")
    assert files.replace_path(staging, target) == target
    assert (target / "file.txt").read_text() == "new" and not staging.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]
    # A target that does not exist yet is simply created.
    files.replace_path(_folder(tmp_path / ".fresh.partial", "first"), tmp_path / "deep" / "fresh")
    assert (tmp_path / "deep" / "fresh" / "file.txt").read_text() == "first"


def test_replace_path_restores_the_old_version_when_the_move_fails(tmp_path: Path, monkeypatch) -> None:
    target = _folder(tmp_path / "run", "old")
    staging = _folder(tmp_path / ".run.partial", "new")
    real_replace = os.replace

    def failing_replace(source, destination):
        if Path(source) == staging:
            raise OSError("disk full")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        files.replace_path(staging, target)
    assert (target / "file.txt").read_text() == "old" and (staging / "file.txt").read_text() == "new"
    assert not [path for path in tmp_path.iterdir() if "retired" in path.name]


def test_write_json_atomically_makes_numpy_and_nan_json_ready(tmp_path: Path) -> None:
    path = tmp_path / "out" / "document.json"
    path.parent.mkdir()
    path.write_text("previous")
    files.write_json_atomically(path, {"count": np.int64(3), "rate": np.float32(0.5), "missing": math.nan,
                                       "items": (1, 2), "where": tmp_path})
    assert json.loads(path.read_text()) == {"count": 3, "rate": 0.5, "missing": None, "items": [1, 2],
                                            "where": str(tmp_path)}
    assert sorted(item.name for item in path.parent.iterdir()) == ["document.json"]
