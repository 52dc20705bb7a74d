"""The command line: ``python -m fracture_lib <command> ...``.

Thin by design: each command parses its arguments and calls one library function. Errors a user
can cause are printed as one line (``error: ...``) with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from fracture_lib import config
from fracture_lib.errors import FractureLibError, ParameterError

# Keep TensorFlow's C++ start-up chatter out of the terminal unless the user asks for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cmd_index(args: argparse.Namespace) -> int:
    """Index a data source, print its summary and what reading it found, and write it as CSV."""
    import time
    import warnings

    from fracture_lib import datasets

    started = time.perf_counter()
    # Paths typed on the command line are taken from the current folder, as a shell user expects.
    with warnings.catch_warnings():
        # The report's notes are printed below; the same sentences as warnings would say them twice.
        warnings.simplefilter("ignore", UserWarning)
        indexed = datasets.index_source(os.path.abspath(args.data_root), parts=args.parts, seed=args.seed,
                                        val_fraction=args.val_fraction, drop_missing=args.drop_missing,
                                        verify_images=args.verify_images, keep_truncated=args.keep_truncated)
    index = indexed.index
    print(datasets.summarize_index(index).to_string(index=False))
    for note in indexed.report.notes:
        print(f"note: {note}")
    out_path = datasets.save_index(index, os.path.abspath(args.out))
    print(f"{indexed.source.name}: {len(index)} images, {index['study'].nunique()} studies, "
          f"{index['patient'].nunique()} patients; no patient in two splits; fingerprint "
          f"{datasets.index_fingerprint(index)}; {time.perf_counter() - started:.1f} s; written to {out_path}")
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    """Generate the synthetic MURA-layout demo dataset."""
    import time

    import pandas as pd

    from fracture_lib import synthetic

    started = time.perf_counter()
    out_dir = config.resolve_path(args.out_dir)
    kwargs = {"seed": args.seed, "parts": args.parts or synthetic.DEMO_PARTS}
    if not args.layout_from and (args.limit is not None or args.long_side is not None):
        raise ParameterError("--limit and --long-side only apply with --layout-from (MURA's label files); "
                             "the demo set's size is --patients")
    if args.layout_from:
        # MURA's own paths and labels (all 40,005 films, or --limit of them), each film a phantom.
        synthetic.generate_from_label_files(args.layout_from, out_dir, limit=args.limit, long_side=args.long_side or synthetic.MURA_LONG_SIDE,
                                            seed=args.seed, difficulty=synthetic.DEFAULT_DIFFICULTY
                                            if args.difficulty is None else args.difficulty)
    elif args.force:
        synthetic.generate_demo_dataset(out_dir, patients=args.patients or synthetic.DEFAULT_DEMO_PATIENTS,
                                        difficulty=synthetic.DEFAULT_DIFFICULTY if args.difficulty is None
                                        else args.difficulty, **kwargs)
    else:
        synthetic.ensure_demo_dataset(out_dir, patients=args.patients, difficulty=args.difficulty, **kwargs)
    mura_dir = out_dir / config.MURA_DIRNAME
    rows = []
    for mura_split in ("train", "valid"):
        studies = pd.read_csv(mura_dir / f"{mura_split}_labeled_studies.csv", header=None, names=["study", "label"])
        studies["part"] = studies["study"].str.split("/").str[2].str.removeprefix("XR_").str.lower()
        images = pd.read_csv(mura_dir / f"{mura_split}_image_paths.csv", header=None, names=["path"])
        images["study"] = images["path"].str.rsplit("/", n=1).str[0] + "/"
        images = images.merge(studies, on="study")
        counts = images.groupby(["part", "label"]).agg(studies=("study", "nunique"), images=("path", "size"))
        rows.append(counts.assign(split=mura_split).reset_index())
    table = pd.concat(rows).pivot_table(index=["split", "part"], columns="label", values=["studies", "images"],
                                        fill_value=0).astype(int)
    print(table.rename(columns={0: "normal", 1: "abnormal"}).to_string())
    parameters = synthetic.demo_parameters(out_dir) or {}
    print(f"synthetic demo set in {mura_dir}: {parameters.get('images')} images, {parameters.get('studies')} studies, "
          f"{parameters.get('patients')} patients, seed {parameters.get('seed')} "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Train one fracture model or the body-part classifier; print where it was saved and its best metric."""
    from fracture_lib import parameters
    from fracture_lib.train import TrainConfig, train_model

    # The parameter file (params.yaml, or a preset on top of it), then --set, then the named options.
    values = parameters.training_values(parameters.load_parameters(args.params, parameters.parse_overrides(args.set)))
    named = {"arch": args.arch, "img_size": args.img_size, "epochs": args.epochs, "batch_size": args.batch_size,
             "learning_rate": args.learning_rate, "seed": args.seed, "patience": args.patience,
             "run_name": args.run_name, "clahe": True if args.clahe else None, "precision": args.precision,
             "jit_compile": True if args.jit_compile else None, "augment_on": args.augment_on,
             "lr_scaling": args.lr_scaling}
    values.update({key: value for key, value in named.items() if value is not None})
    # Folders typed on the command line are taken from the shell's working directory.
    if args.weights is not None:
        values["weights"] = os.path.abspath(args.weights) if os.path.exists(args.weights) else args.weights
    if args.data:
        values["data_dir"] = os.path.abspath(args.data)
    elif values.get("data_dir"):
        values["data_dir"] = str(config.resolve_path(values["data_dir"]))
    train_config = TrainConfig(target=args.target, body_part=args.part, parts=config.parse_body_parts(args.parts),
                               keep_truncated=args.keep_truncated, **values)
    result = train_model(train_config, models_dir=os.path.abspath(args.models_dir), verbose=args.verbose,
                         restart=args.restart)
    metric = "val_auroc" if args.target == config.FRACTURE_TARGET else "val_accuracy"
    best = result.best_metrics.get(metric, float("nan"))
    epoch = result.config.get("best_epoch")
    print(f"saved {result.run_dir}")
    print(f"best {metric} {best:.4f} at epoch {epoch + 1 if epoch is not None else '?'} of {len(result.history)} "
          f"({result.seconds:.0f} s{', synthetic data' if result.config.get('synthetic_data') else ''})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    """Score images or study folders with the trained runs; exit 1 when any input failed."""
    from fracture_lib import predict, prediction_output

    # Folders typed on the command line are taken from the shell's working directory.
    gradcam_dir = os.path.abspath(args.gradcam) if args.gradcam else None
    results = predict.predict_paths(args.paths, models_dir=os.path.abspath(args.models), part=args.part,
                                    run_name=args.run_name, gradcam_dir=gradcam_dir, strict=args.strict)
    print(prediction_output.format_json_lines(results) if args.json else prediction_output.format_table(results))
    # Errors go to stderr, one line each, so stdout stays parseable with --json.
    for result in results:
        if result.error is not None:
            print(f"error: {result.error}", file=sys.stderr)
    return 1 if any(result.error is not None for result in results) else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a fracture run on a split of its own data or, with --external, of another source."""
    import json

    from fracture_lib import evaluation, files, runs

    run = runs.load_run(runs.find_run(config.parse_body_parts(args.part)[0], args.run_name,
                                      models_dir=os.path.abspath(args.models)))
    result = evaluation.evaluate_run(run, os.path.abspath(args.data) if args.data else None, split=args.split,
                                     external=args.external, aggregation=args.aggregation,
                                     threshold_method=args.threshold_method, n_boot=args.n_bootstrap, seed=args.seed)
    out_path = evaluation.save_run_evaluation(result, os.path.abspath(args.out) if args.out else None)
    if args.json:
        print(json.dumps(files.json_ready(result.to_dict()), allow_nan=False))
    else:
        print(result.summary())
        print(f"written to {out_path}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    """List the trained runs with their headline metrics."""
    from fracture_lib import runs

    table = runs.list_runs(os.path.abspath(args.models))
    print(runs.format_runs_json(table) if args.json else runs.format_runs_table(table))
    return 0


def _cmd_reports(args: argparse.Namespace) -> int:
    """Execute the notebooks with papermill and export the HTML reports."""
    from fracture_lib import parameters, reports

    overrides = parameters.parse_overrides(args.set)
    named = {
        "body_parts": args.parts,
        "epochs": args.epochs,
        "data_dir": args.data_dir,
        "arch": args.arch,
        "weights": args.weights,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "run_name": args.run_name,
        "demo_patients": args.demo_patients,
        "demo_difficulty": args.demo_difficulty,
    }
    overrides.update({key: value for key, value in named.items() if value is not None})
    values = parameters.load_parameters(args.params, overrides)
    only = args.only.split(",") if args.only else None
    reports.run_reports(values, reports_dir=args.reports_dir, only=only, command=reports.command_line(),
                        workers=args.workers)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run the input-pipeline, training and scoring benchmarks (or, with --gpu, the GPU one) and write JSON."""
    # Paths typed on the command line are taken from the current folder, as a shell user expects.
    out_path = os.path.abspath(args.out) if args.out else None
    data_dir = os.path.abspath(args.data) if args.data else None
    gpu_options = {"arch": args.arch, "img_size": args.img_size, "batch_size": args.batch_size, "steps": args.steps,
                   "images": args.images, "max_seconds": args.max_seconds}
    scale_options = {"sizes": args.sizes, "cache_sizes": args.cache_sizes, "train_img_size": args.train_img_size}
    if not args.scale and any(value is not None for value in scale_options.values()):
        raise ParameterError("--sizes, --cache-sizes and --train-img-size only apply with --scale")
    if args.scale:
        if args.gpu or args.quick:
            raise ParameterError("--scale is a benchmark of its own: run it without --gpu and --quick")
        from fracture_lib.bench import scale

        train_img_size = args.train_img_size or 128
        cache_sizes = scale.parse_sizes(args.cache_sizes or "128,320")
        if None in cache_sizes:
            raise ParameterError(f"--cache-sizes {args.cache_sizes!r}: give sizes in pixels, e.g. 128,320")
        scale.run_scale_benchmarks(data_dir, out_path, sizes=scale.parse_sizes(args.sizes or "1000,5000,20000,all"),
                                   cache_sizes=tuple(dict.fromkeys((*cache_sizes, train_img_size))),
                                   train_img_size=train_img_size)
        return 0
    if not args.gpu:
        given = [f"--{name.replace('_', '-')}" for name, value in gpu_options.items() if value is not None]
        given += ["--allow-cpu"] if args.allow_cpu else []
        if given:
            raise ParameterError(f"{', '.join(given)} only apply with --gpu")
        from fracture_lib import bench

        bench.run_benchmarks(out_path=out_path, quick=args.quick, data_dir=data_dir, seed=args.seed)
        return 0
    if args.quick:
        raise ParameterError("--quick is the CPU benchmark's small plan: shrink --gpu with --steps and --images")
    from fracture_lib.bench import gpu

    plan = gpu.GpuPlan(**{name: value for name, value in gpu_options.items() if value is not None})
    gpu.run_gpu_benchmarks(out_path=out_path, data_dir=data_dir, plan=plan, allow_cpu=args.allow_cpu, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with one sub-command per task."""
    parser = argparse.ArgumentParser(
        prog="python -m fracture_lib",
        description="Fracture detection on MURA v1.1 musculoskeletal radiographs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        # argparse %-formats help strings (not descriptions), so a percent sign is doubled there.
        sub = commands.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    index = add("index", _cmd_index, "Index a data source (MURA, FracAtlas or a manifest CSV) into one tidy table with a patient-level split.")
    index.add_argument("data_root", metavar="SOURCE",
                       help="a folder that contains MURA-v1.1/, a FracAtlas folder, or a manifest CSV (path,label,...)")
    index.add_argument("--parts", default=None, help="comma-separated body parts (default: all present)")
    index.add_argument("--seed", type=int, default=config.DEFAULT_SEED, help="seed of the train/val split")
    index.add_argument("--val-fraction", type=float, default=config.DEFAULT_VAL_FRACTION,
                       help="fraction of MURA-train (or manifest) patients moved to the validation split")
    index.add_argument("--drop-missing", action="store_true",
                       help="drop listed images that are missing or unreadable instead of failing")
    index.add_argument("--verify-images", action="store_true", help="decode every image to find unreadable files")
    index.add_argument("--keep-truncated", action="store_true",
                       help="keep truncated JPEGs (left out by default: their grey-filled rows are an artefact)")
    index.add_argument("--out", required=True, help="CSV file to write")

    demo = add("demo-data", _cmd_demo_data, "Write the synthetic demo dataset in MURA v1.1's exact layout.")
    demo.add_argument("out_dir", nargs="?", default=str(config.DEMO_DATA_ROOT),
                      help="data root to create (MURA-v1.1/ goes inside); default data/demo")
    demo.add_argument("--patients", type=int, default=None, help="number of patients")
    demo.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    demo.add_argument("--parts", default=None, help="comma-separated body parts (default elbow,hand,shoulder)")
    demo.add_argument("--difficulty", type=float, default=None,
                      help="0 (obvious fractures, plain films) to 1 (subtle fractures, noisy films); "
                           "default: the generator's (docs/demo-phantoms.md)")
    demo.add_argument("--force", action="store_true", help="regenerate even when an identical set exists")
    demo.add_argument("--layout-from", default=None, metavar="DIR",
                      help="lay out MURA's own tree from its four label CSV files in DIR (every path, e.g. "
                           "40,005 films, for scale benchmarks), each film a phantom at MURA's size")
    demo.add_argument("--limit", type=int, default=None,
                      help="with --layout-from: about this many images (whole studies in file order until the "
                           "limit is reached, so the last study may pass it by a few films)")
    demo.add_argument("--long-side", type=int, default=None,
                      help="with --layout-from: the films' long side in pixels (default MURA's 512)")

    # The train, predict, models, reports and bench commands add their own options here.
    from fracture_lib import cli_options  # noqa: PLC0415  (kept apart to keep this file short)

    cli_options.add_train(add("train", _cmd_train, "Train a fracture model for one body part, or the body-part classifier."))
    cli_options.add_predict(add("predict", _cmd_predict, "Score radiographs or study folders: body part, fracture probability, decision."))
    cli_options.add_evaluate(add("evaluate", _cmd_evaluate, "Evaluate a fracture run: image- and study-level metrics with 95% intervals, internal or external."))
    cli_options.add_models(add("models", _cmd_models, "List trained runs with their headline metrics."))
    cli_options.add_reports(add("reports", _cmd_reports, "Run every notebook headlessly and write the HTML reports."))
    cli_options.add_bench(add("bench", _cmd_bench, "Measure input-pipeline, training and scoring speed (--gpu: GPU training)."))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except FractureLibError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
