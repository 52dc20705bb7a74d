"""How close demo films come to real ones: grey levels inside the body, compared across sets.

A film's body is what lies above the background: the pixels over Otsu's threshold of a blurred
copy (bright collimation bands and markers count too; they are a small share). The distance
between two sets is the Wasserstein (earth mover's) distance between their pooled grey-level
histograms inside the body, in grey levels (0-255): how far, on average, a grey level of one set
has to move to match the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from fracture_lib import imageio

HISTOGRAM_SIDE = 512  # films are resized to this long side first, so each counts about the same


def find_films(folder: str | os.PathLike[str], limit: int | None = None) -> list[Path]:
    """Image files the project's decoder reads anywhere under ``folder``, sorted; none when it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    films = sorted(path for path in folder.rglob("*") if path.suffix.lower() in imageio.IMAGE_SUFFIXES and path.is_file())
    return films[:limit] if limit is not None else films


def body_mask(image: np.ndarray) -> np.ndarray:
    """Pixels of an 8-bit film that belong to the body (soft tissue and bone), as booleans."""
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=max(1.0, max(image.shape) / 200))
    threshold, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return blurred > threshold


def _fit(image: np.ndarray) -> np.ndarray:
    """The film resized to ``HISTOGRAM_SIDE`` pixels on its long side."""
    scale = HISTOGRAM_SIDE / max(image.shape)
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def body_histogram(images: Iterable[np.ndarray | str | os.PathLike[str]]) -> np.ndarray:
    """The pooled grey-level histogram (256 bins, summing to 1) inside the body of each film."""
    counts = np.zeros(256, np.float64)
    for image in images:
        pixels = _fit(_read(image))
        film = np.bincount(pixels[body_mask(pixels)], minlength=256).astype(np.float64)
        # Each film weighs the same, whatever the share of it the body fills.
        counts += film / max(film.sum(), 1.0)
    if counts.sum() == 0:
        raise ValueError("no film to take a histogram of")
    return counts / counts.sum()


def wasserstein_grey(first: np.ndarray, second: np.ndarray) -> float:
    """Earth mover's distance between two 256-bin grey-level histograms, in grey levels."""
    if first.shape != (256,) or second.shape != (256,):
        raise ValueError("both histograms must have 256 bins")
    first, second = first / first.sum(), second / second.sum()
    return float(np.abs(np.cumsum(first) - np.cumsum(second)).sum())


@dataclass
class FilmComparison:
    """A few demo and real films to show, and the body grey-level histograms of all of them."""

    demo_films: list[np.ndarray]
    real_films: list[np.ndarray]
    demo_histogram: np.ndarray
    real_histogram: np.ndarray | None
    demo_count: int
    real_count: int

    @property
    def distance(self) -> float | None:
        """Wasserstein distance between the two histograms in grey levels; None without real films."""
        return None if self.real_histogram is None else wasserstein_grey(self.demo_histogram, self.real_histogram)


def compare_with_real(demo_films: Iterable[np.ndarray | str | os.PathLike[str]],
                      real_films: Iterable[np.ndarray | str | os.PathLike[str]], shown: int = 3) -> FilmComparison:
    """Compare demo films with real ones (arrays or paths); keep the first ``shown`` of each to display."""
    demo = [_read(film) for film in demo_films]
    real = [_read(film) for film in real_films]
    if not demo:
        raise ValueError("no demo film to compare")
    return FilmComparison(demo[:shown], real[:shown], body_histogram(demo), body_histogram(real) if real else None,
                          len(demo), len(real))


def _read(film: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
    """An 8-bit grey film, read with the project's decoder when given as a path."""
    return film if isinstance(film, np.ndarray) else imageio.load_image(film)
