"""Timing helpers shared by every benchmark: one timed piece of work, and summaries of several.

A ``Measurement`` holds the wall-clock and CPU seconds of work on a number of images. Rates are
summarised as the best pass (the usual way to keep other processes on a shared machine out of
a speed figure), the median pass and the spread of all passes; the CPU time per image (all
threads of this process) is reported beside them because it hardly depends on that load.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class Measurement:
    """Wall-clock and CPU seconds of a piece of work on ``items`` images."""

    items: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Images per second (wall clock)."""
        return self.items / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_ms_per_item(self) -> float:
        """CPU milliseconds (all threads) per image."""
        return 1000.0 * self.cpu_seconds / self.items if self.items else float("nan")


def measure(work: Callable[[], int]) -> Measurement:
    """Run ``work`` (which returns how many images it handled) and time it."""
    wall, cpu = time.perf_counter(), time.process_time()
    items = work()
    return Measurement(items, time.perf_counter() - wall, time.process_time() - cpu)


def best(measurements: Sequence[Measurement]) -> Measurement:
    """The fastest of several timed passes."""
    return max(measurements, key=lambda measurement: measurement.rate)


def total(measurements: Sequence[Measurement]) -> Measurement:
    """Several passes as one: their images, wall seconds and CPU seconds added up."""
    return Measurement(sum(m.items for m in measurements), sum(m.seconds for m in measurements),
                       sum(m.cpu_seconds for m in measurements))


def spread(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, minimum, maximum and quartiles of some values (per-pass rates or per-repeat ratios)."""
    quartiles = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"median": round(float(statistics.median(values)), digits), "min": round(float(min(values)), digits),
            "max": round(float(max(values)), digits),
            "quartiles": [round(float(value), digits) for value in quartiles]}


def summary(measurements: Sequence[Measurement]) -> dict[str, Any]:
    """Best and median rate, the best pass's CPU cost and every pass's rate, of several passes."""
    fastest = best(measurements)
    rates = [m.rate for m in measurements]
    return {"images_per_second": round(fastest.rate, 1),
            "median_images_per_second": round(statistics.median(rates), 1),
            "cpu_ms_per_image": round(fastest.cpu_ms_per_item, 4),
            "images_per_pass": fastest.items,
            "passes": [round(rate, 1) for rate in rates]}
