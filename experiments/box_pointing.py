"""Where do FracAtlas models look? The pointing game on validation films, with and without box supervision.

For each run given, Grad-CAM of its last convolutional layer on every fractured film of its part's
*validation* split (the test split is not looked at here): the share of films whose heatmap peak
lies inside a fracture box, and within one Grad-CAM cell of one, each beside its chance rate (the
share of the square the boxes cover). A figure shows the same validation films under each run.

    python experiments/box_pointing.py experiments/models/hand/real-cpu-seed42 \\
        experiments/models/hand/real-cpu-boxes-seed42 --labels "without boxes" "with boxes"

Results go to ``experiments/results/box-pointing.json`` and ``docs/figures/box-pointing.png``.
Needs ``../shared/fracatlas`` (or ``--data``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fracture_lib import config, datasets, explain, runs
from fracture_lib.boxes import load_model_boxes
from fracture_lib.files import write_json_atomically

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = config.PROJECT_ROOT.parent / "shared" / "fracatlas"
FIGURE = config.PROJECT_ROOT / "docs" / "figures" / "box-pointing.png"
RESULTS = HERE / "results" / "box-pointing.json"
FIGURE_FILMS = 6


def fractured_val_paths(run: runs.LoadedRun, data: Path) -> list[str]:
    """The run's own part's fractured validation films (the split of the run's split seed)."""
    index = datasets.build_index(datasets.resolve_source(data), seed=run.config["split_seed"])
    chosen = index[(index["split"] == "val") & (index["label"] == 1) & (index["body_part"] == run.config["body_part"])]
    return chosen["path"].tolist()


def play(run: runs.LoadedRun, data: Path, paths: list[str]) -> dict:
    """The pointing game at no tolerance and within one Grad-CAM cell, and the per-film rows."""
    cell = explain.gradcam_cell_size(run.model)
    exact, rows = explain.pointing_game_for_paths(run.model, data, paths, run.preprocess)
    near, _ = explain.pointing_game_for_paths(run.model, data, paths, run.preprocess, tolerance=cell)
    return {"films": exact["n"], "inside_box": exact, "within_one_cell": near, "cell_pixels": cell,
            "rows": rows}


def figure(runs_and_labels: list[tuple[runs.LoadedRun, str]], data: Path, paths: list[str]) -> Figure:
    """Grad-CAM overlays of the same validation films (columns) under each run (rows), boxes in white."""
    columns = min(FIGURE_FILMS, len(paths))
    shown = paths[:columns]
    canvas = Figure(figsize=(2.4 * columns + 0.6, 2.7 * len(runs_and_labels)), layout="constrained")
    axes = canvas.subplots(len(runs_and_labels), columns, squeeze=False)
    for row, (run, label) in enumerate(runs_and_labels):
        images, heatmaps = explain.explain_paths(run.model, data, shown, run.preprocess)
        boxes = load_model_boxes(data, shown, int(run.preprocess.img_size))
        for column, (path, image, heatmap) in enumerate(zip(shown, images, heatmaps)):
            axis = axes[row, column]
            axis.imshow(explain.overlay(image, heatmap))
            for box in boxes.loc[boxes["path"] == path, ["x_min", "y_min", "x_max", "y_max"]].to_numpy():
                axis.add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1],
                                         fill=False, edgecolor="white", linewidth=1.2))
            peak = explain.heatmap_peak(heatmap)
            axis.plot(peak[1], peak[0], "x", color="white", markersize=8, markeredgewidth=2)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(Path(path).name, fontsize=8)
            if column == 0:
                axis.set_ylabel(label, fontsize=10)
    canvas.suptitle("FracAtlas hand validation films: Grad-CAM (red = most influence on 'fractured'), "
                    "fracture boxes in white, peak as a cross", fontsize=10)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    labels = args.labels or [path.name for path in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit("give one label per run")
    data = args.data.resolve()
    loaded = [runs.load_run(path) for path in args.runs]
    paths = fractured_val_paths(loaded[0], data)
    results = {"measured": time.strftime("%Y-%m-%d %H:%M"), "data": str(data), "split": "val", "runs": {}}
    for run, label, path in zip(loaded, labels, args.runs):
        outcome = play(run, data, paths)
        outcome.pop("rows")
        results["runs"][label] = {"run_dir": str(path), **outcome}
        print(label, json.dumps(outcome))
    write_json_atomically(RESULTS, results)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    figure(list(zip(loaded, labels)), data, paths).savefig(FIGURE, dpi=110)
    print(f"wrote {RESULTS} and {FIGURE}")


if __name__ == "__main__":
    main()
