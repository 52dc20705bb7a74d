"""Writing result files safely, and where native libraries' stderr goes.

A crash or an error half-way through never leaves a truncated file in place of an earlier good
one: the rename (``os.replace``) is atomic on one file system.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator


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
