"""fracture_lib: fracture detection on musculoskeletal radiographs (MURA, FracAtlas, manifests)."""

import warnings as _warnings
from pathlib import Path as _Path

__version__ = "0.1.0"

_PACKAGE_DIR = str(_Path(__file__).resolve().parent)
_original_formatwarning = _warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None):  # noqa: ANN001, ANN202
    """Show this library's warnings as one sentence (``UserWarning: ...``), without a source line.

    Its warnings are messages for the reader of a report or a terminal (a label contradiction, a
    dropped file); other libraries' warnings keep Python's usual format.
    """
    if str(filename).startswith(_PACKAGE_DIR):
        return f"{category.__name__}: {message}\n"
    return _original_formatwarning(message, category, filename, lineno, line)


_warnings.formatwarning = _format_warning
