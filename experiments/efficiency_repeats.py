"""Pipeline efficiency (pipeline-fed over in-memory training) with more repeats than ``make bench``.

``make bench`` measures the efficiency with 4 repeats, each a fresh process per source; on a
shared 2-core machine single processes of the same source differ by up to 25%, so the median of
4 ratios moves by a few hundredths between runs. This script runs the same measurement
(``bench.training.bench_efficiency`` on the demo set's 128-px cache) with ``--repeats`` repeats.

    python experiments/efficiency_repeats.py --repeats 12

Results go to ``experiments/results/efficiency-repeats.json`` (committed, quoted in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from fracture_lib import config, datasets, files, synthetic
from fracture_lib.bench import FULL_PLAN, Context, bench_cache
from fracture_lib.bench.training import bench_efficiency

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--out", default=str(HERE / "results" / "efficiency-repeats.json"))
    args = parser.parse_args()
    source = datasets.resolve_source(synthetic.ensure_demo_dataset(config.DEMO_DATA_ROOT))
    index = datasets.build_index(source, seed=config.DEFAULT_SEED)
    plan = dataclasses.replace(FULL_PLAN, efficiency_repeats=args.repeats)
    with tempfile.TemporaryDirectory(prefix="efficiency-repeats-") as cache_dir:
        context = Context(source.root, index, plan, Path(cache_dir), config.DEFAULT_SEED, print)
        bench_cache(context)
        result = bench_efficiency(context)
    files.write_json_atomically(args.out, result)
    print(json.dumps({key: value for key, value in result.items() if key != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
