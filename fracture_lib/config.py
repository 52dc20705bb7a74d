"""Paths, body parts and defaults in one place.

All paths are resolved from the project root (the folder that holds ``pyproject.toml``), never
from the current working directory, so notebooks, the CLI and tests agree wherever they run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from fracture_lib.errors import ParameterError

# The project root is the parent of this package's folder.
PROJECT_ROOT = Path(__file__).resolve().parents[1]



def _path_from_environment(variable: str, default: Path) -> Path:
    """Return the folder named by an environment variable, or ``default``.

    Only the generated-output folders can be moved this way (the test suite and the report
    runner use it to keep their outputs apart from the user's); relative values are taken
    from the project root.
    """
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    path = Path(value).expanduser()
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()


DATA_DIR = PROJECT_ROOT / "data"
MURA_DIRNAME = "MURA-v1.1"
# The real dataset is unzipped to data/MURA-v1.1; its "data root" is data/.
REAL_DATA_ROOT = DATA_DIR
# The synthetic demo dataset lives in data/demo/MURA-v1.1.
DEMO_DATA_ROOT = _path_from_environment("FRACTURE_DEMO_DIR", DATA_DIR / "demo")
# A few real radiographs (MURA's layout or any folder of PNG/JPEG films) that notebook 01 shows
# beside the demo films when the folder exists; in this project's workspace, ../shared.
REAL_SAMPLES_DIR = _path_from_environment("FRACTURE_REAL_SAMPLES_DIR", PROJECT_ROOT.parent / "shared" / "real-xray-samples")
CACHE_DIR = _path_from_environment("FRACTURE_CACHE_DIR", DATA_DIR / "cache")
MODELS_DIR = _path_from_environment("FRACTURE_MODELS_DIR", PROJECT_ROOT / "models")
REPORTS_DIR = _path_from_environment("FRACTURE_REPORTS_DIR", PROJECT_ROOT / "reports")
METRICS_DIR = REPORTS_DIR / "metrics"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
PARAMS_FILE = PROJECT_ROOT / "params.yaml"

# MURA v1.1 study types, in the dataset's own order (folder names are XR_<PART upper-case>).
ALL_BODY_PARTS: tuple[str, ...] = (
    "elbow",
    "finger",
    "forearm",
    "hand",
    "humerus",
    "shoulder",
    "wrist",
)
# The body parts this project trains on by default.
DEFAULT_BODY_PARTS: tuple[str, ...] = ("elbow", "hand", "shoulder")
# The target name of the body-part classifier (the "router"); its runs live in models/body_part/.
BODY_PART_TARGET = "body_part"
FRACTURE_TARGET = "fracture"
# The inputs of a training model with box supervision (``box_supervision``), as the pipeline yields them.
IMAGE_INPUT = "image"
BOX_TARGET_INPUT = "box_target"

# A body-part name as tables, folders and ``--parts`` spell it.
BODY_PART_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,39}")

KERNEL_NAME = "fracture"
DEFAULT_SEED = 42
DEFAULT_VAL_FRACTION = 0.125


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as an absolute path; relative paths are taken from the project root."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = PROJECT_ROOT / candidate
    return candidate.resolve()


def real_data_available() -> bool:
    """Tell whether the real MURA v1.1 has been placed in ``data/MURA-v1.1``."""
    return (REAL_DATA_ROOT / MURA_DIRNAME).is_dir()


def resolve_data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: the folder that contains ``MURA-v1.1/``.

    ``None`` (or an empty string) means "the real MURA when present, else the demo set".
    A path that points at the ``MURA-v1.1`` folder itself is accepted and its parent returned.
    """
    if data_dir is None or str(data_dir).strip() in ("", "None", "null", "auto"):
        return REAL_DATA_ROOT if real_data_available() else DEMO_DATA_ROOT
    root = resolve_path(data_dir)
    if root.name == MURA_DIRNAME:
        root = root.parent
    return root


def parse_body_parts(value: str | Iterable[str] | None, allowed: Iterable[str] | None = None) -> tuple[str, ...]:
    """Parse ``"elbow,hand"`` or ``["elbow", "hand"]`` into a tuple of body-part names.

    ``None`` gives the default parts. Names are case-insensitive and may carry MURA's ``XR_``
    prefix. Any lower-case name is accepted (MURA's seven study types and whatever another
    source names, such as FracAtlas's ``leg`` and ``hip``); whether the data hold that part is
    checked where the data are read. ``allowed`` restricts the names (the demo generator draws
    only its own parts); a malformed or disallowed name raises ``ParameterError``.
    """
    if value is None:
        return DEFAULT_BODY_PARTS
    if isinstance(value, str):
        items = [item for item in value.replace(" ", ",").split(",") if item]
    else:
        items = [str(item) for item in value]
    allowed = None if allowed is None else tuple(allowed)
    parts: list[str] = []
    for item in items:
        name = normalise_body_part(item)
        if allowed is not None and name not in allowed:
            raise ParameterError(f"unknown body part {item!r}: choose from {', '.join(allowed)}")
        if not BODY_PART_PATTERN.fullmatch(name):
            raise ParameterError(
                f"unknown body part {item!r}: a body part is a lower-case name such as "
                f"{', '.join(DEFAULT_BODY_PARTS)}, leg or hip (letters, digits, '_' and '-')"
            )
        if name not in parts:
            parts.append(name)
    if not parts:
        raise ParameterError("no body part given: choose from " + ", ".join(allowed or ALL_BODY_PARTS))
    return tuple(parts)


def normalise_body_part(name: object) -> str:
    """``"XR_ELBOW"``, ``" Elbow "`` -> ``"elbow"``: the spelling every table and folder uses."""
    text = str(name).strip().lower()
    return text[3:] if text.startswith("xr_") else text
