"""Showing ``predict``'s results: a readable table, a DataFrame (notebook 06) and JSON lines.

The JSON schema of one result is documented in ``predict``'s module docstring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from fracture_lib.predict import PredictionResult


def _check(result: PredictionResult) -> str:
    """The outlier check of one input: ok, unfamiliar, or unchecked (a run has no rule)."""
    return {True: "unfamiliar", False: "ok", None: "unchecked"}[result.unfamiliar]


def _short(value: float | None, digits: int = 3) -> str:
    """Format a probability for the table; '-' when absent."""
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(results: Sequence[PredictionResult]) -> str:
    """Return a readable table: one row per input, one indented row per image of a study, notes.

    Failed inputs get a row marked ``error``; their messages are not repeated here (the CLI
    prints them on stderr).
    """
    header = ("INPUT", "KIND", "BODY PART", "P(PART)", "P(ABNORMAL)", "THRESHOLD", "DECISION", "CHECK")
    rows: list[tuple[str, ...]] = []
    for result in results:
        if result.error is not None:
            rows.append((result.input, result.kind or "-", result.body_part or "-",
                         _short(result.body_part_probability), "-", "-", "error",
                         "-" if result.unfamiliar is None else _check(result)))
            continue
        part_probability = "override" if result.body_part_source == "override" else _short(result.body_part_probability)
        rows.append((result.input, result.kind, result.body_part, part_probability,
                     _short(result.probability), _short(result.threshold), result.decision, _check(result)))
        if result.kind == "study":
            for image in result.images:
                rows.append(("  " + Path(image.path).name, "image", "", "", _short(image.probability), "",
                             image.decision, ""))
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    notes = list(dict.fromkeys(f"note: {note}" for result in results for note in result.notes))
    gradcams = [image.gradcam for result in results for image in result.images if image.gradcam]
    if gradcams:
        notes.append(f"note: {len(gradcams)} Grad-CAM overlay(s) written to {Path(gradcams[0]).parent}")
    return "\n".join(lines + notes)


def results_frame(results: Sequence[PredictionResult]) -> pd.DataFrame:
    """Return one row per input (part, probabilities, threshold, decision, error) as a DataFrame."""
    columns = ("input", "kind", "body_part", "body_part_probability", "body_part_source", "probability",
               "threshold", "decision", "unfamiliar", "error")
    rows = [{column: getattr(result, column) for column in columns} for result in results]
    for row, result in zip(rows, results):
        row["images"] = len(result.images)
    return pd.DataFrame(rows, columns=[*columns[:5], "images", *columns[5:]])


def format_json_lines(results: Sequence[PredictionResult]) -> str:
    """Return one JSON object per input, one per line."""
    return "\n".join(result.to_json() for result in results)
