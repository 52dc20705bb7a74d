"""Summaries across body parts: the fracture models' study-level test metrics side by side.

Read from the metrics files that ``evaluation.save_evaluation`` writes (``reports/metrics/<part>.json``);
notebook 05 and the report index show them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from fracture_lib import config
from fracture_lib.metrics import format_interval

# The MURA paper's DenseNet-169 study-level Cohen's kappa (Rajpurkar et al. 2017, Table 2),
# measured on MURA's hidden test set; ours are measured on the public valid set.
MURA_PAPER_KAPPA: dict[str, float] = {"elbow": 0.710, "hand": 0.851, "shoulder": 0.729}


def load_metrics(body_part: str, metrics_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The metrics file of one body part, or ``None`` when it has not been written."""
    path = Path(metrics_dir or config.METRICS_DIR) / f"{body_part}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def summary_table(body_parts: Sequence[str], metrics_dir: str | os.PathLike[str] | None = None,
                  metrics: Sequence[str] = ("kappa", "auroc", "sensitivity", "specificity")) -> pd.DataFrame:
    """One row per body part with the test split's study-level metrics and their CIs.

    Columns: ``body_part``, ``status`` (``ok`` or why it is missing), ``threshold``, then
    ``<metric>``, ``<metric>_ci_low``, ``<metric>_ci_high`` for each metric.
    """
    rows = []
    for part in body_parts:
        document = load_metrics(part, metrics_dir)
        row: dict[str, Any] = {"body_part": part}
        if document is None:
            row["status"] = "no metrics: run notebook 04 for this part"
        else:
            row["status"] = "ok"
            row["run_name"] = document.get("run_name")
            row["threshold"] = document.get("threshold")
            study = document.get("metrics", {}).get("test", {}).get("study", {})
            for name in metrics:
                values = study.get(name) or {}
                for suffix, key in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                    row[name + suffix] = values.get(key)
        rows.append(row)
    columns = ["body_part", "status", "run_name", "threshold"]
    columns += [name + suffix for name in metrics for suffix in ("", "_ci_low", "_ci_high")]
    return pd.DataFrame(rows).reindex(columns=columns).astype({name: float for name in columns[3:]})


def summary_display_table(summary: pd.DataFrame, paper_kappa: Mapping[str, float] | None = None,
                          metrics: Sequence[str] = ("kappa", "auroc", "sensitivity", "specificity")) -> pd.DataFrame:
    """``summary_table`` as readable text: ``value [low, high]`` per metric, the paper's kappa beside ours."""
    rows = []
    for record in summary.to_dict(orient="records"):
        row = {"body part": record["body_part"]}
        for name in metrics:
            row[f"{name} (95% CI)"] = format_interval(record.get(name), record.get(f"{name}_ci_low"),
                                                      record.get(f"{name}_ci_high"))
            if name == "kappa" and paper_kappa is not None:
                reference = paper_kappa.get(record["body_part"])
                row["MURA paper kappa"] = "n/a" if reference is None else f"{reference:.3f}"
        threshold = record.get("threshold")
        row["threshold"] = "n/a" if threshold is None or not np.isfinite(threshold) else f"{threshold:.3f}"
        row["status"] = record["status"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("body part")


def describe_predictions(predictions: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Images, studies, patients and abnormal studies of each named prediction table."""
    rows = []
    for name, frame in predictions.items():
        studies = frame.drop_duplicates("study")
        rows.append({"split": name, "images": len(frame), "studies": len(studies),
                     "patients": frame["patient"].nunique() if "patient" in frame.columns else None,
                     "abnormal studies": int(studies["label"].sum()),
                     "share abnormal (studies)": f"{studies['label'].mean():.1%}" if len(studies) else "n/a"})
    return pd.DataFrame(rows).set_index("split")
