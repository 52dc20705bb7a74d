"""How close the demo films come to real radiographs, before and after the anatomical phantoms.

Renders hand films with the first demo generator (read from git at commit ``a2a8084``) and with
the current one, and measures the Wasserstein distance of grey levels inside the body to
FracAtlas hand films (single-part, non-mixed) and to the three MURA wrist samples. Also times the
generation of the default demo set and saves a figure of demo and real films side by side.

    python experiments/demo_realism.py [--fracatlas ../shared/fracatlas] [--films 200]

Writes ``experiments/results/demo-realism.json`` and ``docs/figures/demo-beside-real.png``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fracture_lib import config, datasets, findings, phantoms, realism, synthetic  # noqa: E402
from fracture_lib.plots import exploration  # noqa: E402

FIRST_GENERATOR_COMMIT = "a2a8084"
PARTS = ("elbow", "hand", "shoulder")


@functools.cache
def _first_generator():
    """The demo generator as it was before the phantoms, imported from git."""
    source = subprocess.run(["git", "show", f"{FIRST_GENERATOR_COMMIT}:fracture_lib/synthetic.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "first_synthetic.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("first_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["first_synthetic"] = module  # so that its worker processes can find its functions
    spec.loader.exec_module(module)
    return module


def _render(part: str, count: int, generator: str) -> list[np.ndarray]:
    """``count`` films of ``part`` (half abnormal) from the first or the current generator."""
    films = []
    first = _first_generator() if generator == "first" else None
    for number in range(count):
        rng = np.random.default_rng([11, number])
        abnormal = number % 2 == 1
        if first is not None:
            films.append(first._render_view(rng, part, number % 3, abnormal)[0])
        else:
            finding = "fracture" if abnormal else findings.NO_FINDING
            films.append(phantoms.render_view(rng, part, number % 3, finding)[0])
    return films


def _fracatlas_hand(folder: Path, limit: int) -> list[Path]:
    """Films the project's FracAtlas index calls hand (one part only), the first ``limit`` by name."""
    source = datasets.resolve_source(folder)
    paths = datasets.index_source(source, parts=["hand"]).index["path"]
    return [source.root / path for path in sorted(paths, key=lambda path: Path(path).name)[:limit]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fracatlas", type=Path, default=config.PROJECT_ROOT.parent / "shared" / "fracatlas")
    parser.add_argument("--films", type=int, default=200)
    args = parser.parse_args()

    real_sets = {"FracAtlas hand": _fracatlas_hand(args.fracatlas, args.films),
                 "MURA wrist samples": realism.find_films(config.REAL_SAMPLES_DIR)}
    real_histograms = {name: realism.body_histogram(paths) for name, paths in real_sets.items() if paths}
    results: dict = {"films_per_demo_set": args.films, "real_films": {k: len(v) for k, v in real_sets.items()},
                     "distance_grey_levels": {}}
    for generator in ("first", "phantoms"):
        films = _render("hand", args.films, generator)
        histogram = realism.body_histogram(films)
        results["distance_grey_levels"][generator] = {
            name: round(realism.wasserstein_grey(histogram, real), 2) for name, real in real_histograms.items()}
        results.setdefault("body_mean_grey", {})[generator] = round(float(histogram @ np.arange(256)), 1)
    for name, real in real_histograms.items():
        results["body_mean_grey"][name] = round(float(real @ np.arange(256)), 1)

    # Generation time of the default demo set (all three parts), both generators, one after the other.
    with tempfile.TemporaryDirectory() as folder:
        timings, images = {}, {}
        for name, module in (("first", _first_generator()), ("phantoms", synthetic)):
            started = time.perf_counter()
            module.generate_demo_dataset(Path(folder) / name)
            timings[name] = round(time.perf_counter() - started, 1)
            images[name] = synthetic.demo_parameters(Path(folder) / name)["images"]
        results["default_set_seconds"] = timings
        results["default_set_images"] = images

    # The figures: demo hand films of each generator beside FracAtlas hand films.
    for generator, name in (("phantoms", "demo-beside-real.png"), ("first", "demo-first-generator-beside-real.png")):
        comparison = realism.compare_with_real(_render("hand", args.films, generator), real_sets["FracAtlas hand"])
        figure = exploration.plot_demo_beside_real(comparison)
        figure.suptitle(f"Demo hand films ({'anatomical phantoms' if generator == 'phantoms' else 'first generator'}, "
                        f"top) beside FracAtlas hand films (bottom)")
        figure.text(0.01, 0.005, "Real films: FracAtlas (Abedeen et al., Scientific Data 10, 521, 2023; CC BY 4.0), "
                    "films flagged hand only.", fontsize=7)
        figure.savefig(ROOT / "docs" / "figures" / name, dpi=100)

    out = ROOT / "experiments" / "results" / "demo-realism.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
