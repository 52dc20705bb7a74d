"""Exceptions that carry a one-line, user-facing message.

Every error a user can cause (bad data layout, unreadable image, unknown body part, bad
parameter, missing model) is raised as a ``FractureLibError`` subclass whose message names the
offending file or value and says how to fix it. The CLI and the report runner print that one
line instead of a traceback.
"""

from __future__ import annotations


class FractureLibError(Exception):
    """Base class for errors caused by user input; the message is shown as a single line."""


class DataLayoutError(FractureLibError):
    """The data folder or its label CSVs do not follow MURA v1.1's layout."""


class ImageReadError(FractureLibError):
    """An image file is missing, corrupt or not an image."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class ModelNotFoundError(FractureLibError):
    """No trained run exists where one was expected."""


class ParameterError(FractureLibError, ValueError):
    """A parameter value is out of range or unknown."""
