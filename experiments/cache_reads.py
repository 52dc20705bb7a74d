"""Read a memory-mapped cache in shuffled batches two ways: through the mapping, or from its file.

``image_rows.gather_rows`` reads a batch of the cache with ``os.preadv`` instead of indexing the
memory map. Both get the bytes from the operating system's file cache, but every page touched
through a mapping is counted in the process's resident memory from then on, so one epoch over a
4-GB cache leaves the training process 4 GB larger. This script measures the cost of each way:
one epoch of shuffled 32-image batches over a cache of ``--images`` random images of ``--size``
px, each way in a fresh process, the two ways alternating over ``--repeats`` repeats after the
file has been read once (so both find it in the file cache). It prints and writes the
rows per second and the peak RSS of each way, and their ratio per repeat.

    python experiments/cache_reads.py --images 40005 --size 320   # the 4.1-GB MURA-scale cache

Results go to ``experiments/results/cache-reads.json`` (committed, quoted in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fracture_lib import files
from fracture_lib.image_rows import gather_rows

HERE = Path(__file__).resolve().parent
WAYS = ("mapping", "preadv")
BATCH_SIZE = 32


def read_epoch(path: Path, way: str, seed: int) -> dict[str, float]:
    """Read every row of ``path`` once in shuffled batches; return rows/s and the peak RSS in GB."""
    images = np.load(path, mmap_mode="r")
    order = np.random.default_rng(seed).permutation(len(images))
    checksum = 0
    started = time.perf_counter()
    for start in range(0, len(order), BATCH_SIZE):
        rows = order[start:start + BATCH_SIZE]
        if way == "mapping":
            batch = images[rows]  # What the pipeline did before gather_rows.
        else:
            batch = gather_rows(images, rows)
        checksum += int(batch[:, 0, 0].sum())
    seconds = time.perf_counter() - started
    return {"rows_per_second": len(order) / seconds, "seconds": seconds, "checksum": checksum,
            "peak_rss_gb": peak_rss_bytes() / 1e9}


def peak_rss_bytes() -> int:
    """This process's own resident high-water mark (``VmHWM``; ``ru_maxrss`` would carry the parent's over exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40005)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "cache-reads.json"))
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(read_epoch(Path(args.worker[0]), args.worker[1], seed=0)))
        return 0
    with tempfile.TemporaryDirectory(prefix="cache-reads-") as folder:
        path = Path(folder) / "images.npy"
        mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(args.images, args.size, args.size))
        rng = np.random.default_rng(0)
        for start in range(0, args.images, 1000):
            mapped[start:start + 1000] = rng.integers(0, 256, mapped[start:start + 1000].shape, dtype=np.uint8)
        mapped.flush()
        del mapped
        with open(path, "rb") as handle:  # Into the file cache, so neither way reads the disk.
            while handle.read(1 << 24):
                pass
        runs: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
        for repeat in range(args.repeats):
            for way in (WAYS if repeat % 2 == 0 else tuple(reversed(WAYS))):
                finished = subprocess.run([sys.executable, __file__, "--worker", str(path), way],
                                          capture_output=True, text=True, check=True)
                runs[way].append(json.loads(finished.stdout.strip().splitlines()[-1]))
    checksums = {run["checksum"] for measured in runs.values() for run in measured}
    if len(checksums) != 1:
        raise SystemExit(f"the two ways read different bytes: checksums {sorted(checksums)}")
    ratios = [pread["rows_per_second"] / mapping["rows_per_second"]
              for mapping, pread in zip(runs["mapping"], runs["preadv"])]
    result = {"images": args.images, "size": args.size, "cache_gb": round(args.images * args.size ** 2 / 1e9, 3),
              "batch_size": BATCH_SIZE, "repeats": args.repeats,
              "method": "one shuffled epoch per fresh process, the ways alternating; the file in the file cache",
              "rows_per_second": {way: round(statistics.median(run["rows_per_second"] for run in measured), 1)
                                  for way, measured in runs.items()},
              "peak_rss_gb": {way: round(max(run["peak_rss_gb"] for run in measured), 3)
                              for way, measured in runs.items()},
              "preadv_over_mapping_per_repeat": [round(ratio, 3) for ratio in ratios],
              "preadv_over_mapping_median": round(statistics.median(ratios), 3), "runs": runs}
    files.write_json_atomically(args.out, result)
    print(json.dumps({key: value for key, value in result.items() if key != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
