"""Error analysis of one run's decisions: which items were right or wrong, and how confidently.

Notebook 04 picks its Grad-CAM gallery and its table of the most confident mistakes here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from fracture_lib.metrics import check_columns

# Decision outcomes, in the order galleries show them: right calls first, then the mistakes.
OUTCOMES: tuple[str, ...] = ("true positive", "false positive", "false negative", "true negative")


def outcomes(labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray) -> np.ndarray:
    """``"true positive"``, ``"false positive"``, ``"false negative"`` or ``"true negative"`` per item."""
    label_array = np.asarray(labels).astype(int)
    predicted_array = np.asarray(predicted).astype(int)
    correct = np.where(label_array == predicted_array, "true", "false")
    called = np.where(predicted_array == 1, "positive", "negative")
    return np.char.add(np.char.add(correct, " "), called).astype(object)


def examples_by_outcome(predictions: pd.DataFrame, threshold: float, per_outcome: int = 4) -> pd.DataFrame:
    """Up to ``per_outcome`` items of each outcome (``OUTCOMES`` order), the most confident first.

    Adds ``predicted``, ``outcome`` and ``confidence`` (distance of the probability from the
    threshold). Used to pick the Grad-CAM gallery.
    """
    check_columns(predictions, ("label", "probability"), "the prediction table")
    table = predictions.copy()
    table["predicted"] = (table["probability"] >= threshold).astype(int)
    table["outcome"] = outcomes(table["label"], table["predicted"])
    table["confidence"] = (table["probability"] - threshold).abs()
    table["order"] = table["outcome"].map({name: number for number, name in enumerate(OUTCOMES)})
    table = table.sort_values(["order", "confidence"], ascending=[True, False], kind="mergesort")
    return table.groupby("order", sort=True).head(per_outcome).drop(columns="order").reset_index(drop=True)


def most_confident_mistakes(predictions: pd.DataFrame, threshold: float, count: int = 10) -> pd.DataFrame:
    """The ``count`` wrong decisions farthest from the threshold (false positives and negatives)."""
    check_columns(predictions, ("label", "probability"), "the prediction table")
    predicted = (predictions["probability"] >= threshold).astype(int)
    mistakes = predictions[predicted != predictions["label"]].copy()
    mistakes["error"] = outcomes(mistakes["label"], 1 - mistakes["label"])
    mistakes["confidence"] = (mistakes["probability"] - threshold).abs()
    return mistakes.sort_values("confidence", ascending=False, kind="mergesort").head(count).reset_index(drop=True)
