"""Transfer from synthetic to real: a hand model trained on the demo set only, scored on FracAtlas.

For each demo generator (the first one, read from git at commit ``a2a8084``, and the anatomical
phantoms), generate its default demo set, train the hand fracture model with the default recipe
(``params.yaml``, as ``make reports`` does) and score every FracAtlas film the project's index
calls hand as an external source (``evaluate --external --split all``; the threshold stays the
run's own). Also records the model's own demo test AUROC, for comparison.

    python experiments/demo_transfer.py [--fracatlas ../shared/fracatlas]

Writes ``experiments/results/demo-transfer.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from demo_realism import _first_generator  # noqa: E402
from fracture_lib import config, synthetic  # noqa: E402
from fracture_lib.cli import main as cli  # noqa: E402


def _study_auroc(document: dict) -> dict:
    """The study-level AUROC and its interval on the scored split of an ``evaluate`` document."""
    auroc = document["metrics"][document["split"]]["study"]["auroc"]
    return {key: round(float(auroc[key]), 3) for key in ("value", "ci_low", "ci_high")}


def _run(generator: str, fracatlas: Path, workdir: Path) -> dict:
    """Generate, train the hand model, and score the demo test split and FracAtlas hand."""
    module = _first_generator() if generator == "first" else synthetic
    data_root = workdir / generator / "data"
    models = workdir / generator / "models"
    started = time.perf_counter()
    module.generate_demo_dataset(data_root)
    cli(["train", "--part", "hand", "--data", str(data_root), "--models-dir", str(models), "--verbose", "0"])
    documents = {}
    for name, arguments in (("demo test", ["--split", "test"]),
                            ("FracAtlas hand", ["--data", str(fracatlas), "--external", "--split", "all"])):
        out = workdir / generator / f"{name.replace(' ', '-')}.json"
        cli(["evaluate", "--part", "hand", "--models", str(models), *arguments, "--out", str(out)])
        documents[name] = json.loads(out.read_text())
    atlas = documents["FracAtlas hand"]
    return {"demo test study AUROC": _study_auroc(documents["demo test"]),
            "FracAtlas hand study AUROC": _study_auroc(atlas),
            "FracAtlas hand images": int(atlas["counts"]["all"]["image"]["n"]),
            "FracAtlas hand fractured": int(atlas["counts"]["all"]["image"]["n_positive"]),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fracatlas", type=Path, default=config.PROJECT_ROOT.parent / "shared" / "fracatlas")
    args = parser.parse_args()
    results = {"recipe": "params.yaml defaults (small_cnn, 128 px), hand fracture model, default demo set"}
    with tempfile.TemporaryDirectory() as folder:
        for generator in ("first", "phantoms"):
            results[generator] = _run(generator, args.fracatlas, Path(folder))
            print(generator, json.dumps(results[generator]), flush=True)
    out = ROOT / "experiments" / "results" / "demo-transfer.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
