"""Argument definitions of the longer sub-commands (train, predict, models, reports, bench)."""

from __future__ import annotations

import argparse

from fracture_lib import config


def add_train(parser: argparse.ArgumentParser) -> None:
    """Options of ``train``."""
    parser.add_argument("--target", choices=[config.FRACTURE_TARGET, config.BODY_PART_TARGET],
                        default=config.FRACTURE_TARGET,
                        help="'fracture' trains one body part's abnormality model; 'body_part' the router")
    parser.add_argument("--part", default=None, help="body part for --target fracture (elbow, hand, shoulder, leg, ... as the data name it)")
    parser.add_argument("--parts", default=None,
                        help="classes of the body-part classifier (default elbow,hand,shoulder)")
    parser.add_argument("--data", default=None,
                        help="data source: a folder containing MURA-v1.1/, a FracAtlas folder or a manifest CSV "
                             "(default: real MURA if present, else the demo set)")
    parser.add_argument("--keep-truncated", action="store_true",
                        help="keep truncated JPEGs in the data (left out by default: their grey-filled rows are an artefact)")
    parser.add_argument("--params", default=None, metavar="FILE",
                        help="parameter file: params.yaml (the default) or a preset read on top of it, "
                             "e.g. params/real-cpu.yaml; the options below override it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any parameter of the file, e.g. --set schedule=cosine (see params.yaml)")
    parser.add_argument("--arch", default=None, help="small_cnn, small_cnn_patch4, resnet_small, densenet169, densenet121, resnet50, efficientnetb0, mobilenetv2")
    parser.add_argument("--img-size", type=int, default=None, help="square input size in pixels")
    parser.add_argument("--epochs", type=int, default=None, help="maximum number of epochs (early stopping may end sooner)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size per replica; the global batch is this times the number of replicas")
    parser.add_argument("--learning-rate", type=float, default=None, help="the optimiser's initial (peak) learning rate")
    parser.add_argument("--weights", default=None, help="None, 'imagenet', or a path to a .weights.h5 file")
    parser.add_argument("--clahe", action="store_true", help="apply CLAHE contrast equalisation before resizing")
    parser.add_argument("--patience", type=int, default=None, help="epochs without validation improvement before early stopping")
    parser.add_argument("--seed", type=int, default=None, help="seed of the initial weights, shuffling and augmentation (the split has split_seed)")
    parser.add_argument("--run-name", default=None, help="folder name of the run under models/<name>/ (default: as in the parameter file)")
    parser.add_argument("--precision", default=None,
                        help="float32, mixed_float16 or mixed_bfloat16 (mixed precision: for a GPU; the output stays float32)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--augment-on", default=None,
                        help="where augmentation runs: cpu (OpenCV in the tf.data pipeline) or device (in the training step)")
    parser.add_argument("--lr-scaling", default=None,
                        help="linear (the learning rate is one replica's, times the replicas) or none")
    parser.add_argument("--models-dir", default=str(config.MODELS_DIR), help="where runs are written (default models/)")
    parser.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch")
    parser.add_argument("--restart", action="store_true",
                        help="discard an interrupted attempt of this run (models/<name>/.partial-<run>) and train from the first epoch")


def add_predict(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict``."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or study folders")
    parser.add_argument("--models", default=str(config.MODELS_DIR), help="folder of trained runs")
    parser.add_argument("--run-name", default=None, help="run to use for every model (default: the latest)")
    parser.add_argument("--part", default=None, help="skip the body-part classifier and use this part's model")
    parser.add_argument("--gradcam", default=None, metavar="OUT_DIR", help="write a Grad-CAM overlay PNG per image here")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input")
    parser.add_argument("--strict", action="store_true",
                        help="make an input the runs flag as unfamiliar (or cannot check) an error instead of a note")


def add_evaluate(parser: argparse.ArgumentParser) -> None:
    """Options of ``evaluate``."""
    parser.add_argument("--part", required=True, help="body part of the fracture model (elbow, hand, leg, ...)")
    parser.add_argument("--run-name", default=None, help="run under models/<part>/ (default: the latest)")
    parser.add_argument("--data", default=None,
                        help="data source to score (MURA root, FracAtlas folder or manifest CSV); default: the run's own")
    parser.add_argument("--split", default="test", choices=["test", "val", "train", "all"],
                        help="split to score (all: every image, with --external only)")
    parser.add_argument("--external", action="store_true",
                        help="score a source the run was not trained on (external validation; the threshold stays the run's own)")
    parser.add_argument("--aggregation", default=None, choices=["mean", "max"],
                        help="image -> study rule (default: the one of the run's evaluation.json, else mean)")
    parser.add_argument("--threshold-method", default=None, choices=["fixed", "youden"],
                        help="threshold chosen on the run's own validation split (default: as in evaluation.json, else fixed)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="patient resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED, help="seed of the bootstrap")
    parser.add_argument("--models", default=str(config.MODELS_DIR), help="folder of trained runs")
    parser.add_argument("--out", default=None,
                        help="JSON file to write (default models/<part>/<run>/evaluations/<internal|external>-<source>-<split>.json)")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of the table")


def add_models(parser: argparse.ArgumentParser) -> None:
    """Options of ``models``."""
    parser.add_argument("--models", default=str(config.MODELS_DIR), help="folder of trained runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_reports(parser: argparse.ArgumentParser) -> None:
    """Options of ``reports``; each overrides the value in params.yaml."""
    parser.add_argument("--params", default=None, metavar="FILE",
                        help="parameter file: params.yaml (the default) or a preset read on top of it, e.g. params/real-cpu.yaml")
    parser.add_argument("--parts", default=None, help="body parts, e.g. 'elbow hand'")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--arch", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--demo-patients", type=int, default=None)
    parser.add_argument("--demo-difficulty", type=float, default=None,
                        help="difficulty of a demo set generated for the run, 0 to 1")
    parser.add_argument("--only", default=None, help="comma-separated notebook stems to run (e.g. 01_data_exploration)")
    parser.add_argument("--reports-dir", default=str(config.REPORTS_DIR))
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="notebooks run at a time, the trainings side by side (default: 2 on a CPU-only "
                             "machine with 2+ cores, 1 when a GPU is visible)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any other parameter of the file, e.g. --set learning_rate=0.001")


def add_bench(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench`` (the CPU benchmark, or the GPU one with ``--gpu``)."""
    parser.add_argument("--out", default=None,
                        help="JSON file to write (default reports/benchmarks.json, with --gpu reports/benchmarks-gpu.json, "
                             "with --scale reports/benchmarks-scale.json)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and no densenet121: about a minute and a half, for a smoke test")
    parser.add_argument("--data", default=None,
                        help="data root containing MURA-v1.1/ (default: the synthetic demo set, generated if missing)")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED, help="seed of the samples, shuffles and models")
    scale = parser.add_argument_group("MURA-scale benchmark (--scale)")
    scale.add_argument("--scale", action="store_true",
                       help="measure time and peak memory of the index, the cache (128 and 320 px), a training epoch "
                            "and an evaluation against data-set size, on --data (default data/mura-scale, laid out by "
                            "`demo-data data/mura-scale --layout-from MURA-v1.1-csv-folder`)")
    scale.add_argument("--sizes", default=None, help="with --scale: images per size (default 1000,5000,20000,all)")
    scale.add_argument("--cache-sizes", default=None, help="with --scale: cache sizes in pixels (default 128,320)")
    scale.add_argument("--train-img-size", type=int, default=None,
                       help="with --scale: the training epoch's input size (default 128; its cache size is built too)")
    gpu = parser.add_argument_group("GPU benchmark (--gpu)")
    gpu.add_argument("--gpu", action="store_true",
                     help="measure GPU training instead: DenseNet-169 at 320 px in float32 and mixed precision, fed by "
                          "the pipeline and from memory, with and without XLA, peak GPU memory (a 7-minute budget)")
    gpu.add_argument("--allow-cpu", action="store_true",
                     help="with --gpu: run the grid on the CPU when no GPU is visible (tests; slow with DenseNet-169)")
    gpu.add_argument("--arch", default=None, help="with --gpu: the architecture (default densenet169)")
    gpu.add_argument("--img-size", type=int, default=None, help="with --gpu: input size in pixels (default 320)")
    gpu.add_argument("--batch-size", type=int, default=None, help="with --gpu: batch size (default 32)")
    gpu.add_argument("--steps", type=int, default=None,
                     help="with --gpu: timed steps per cell, after an untimed epoch of as many (default 50)")
    gpu.add_argument("--images", type=int, default=None,
                     help="with --gpu: images cached and fed by the pipeline (default 1024)")
    gpu.add_argument("--max-seconds", type=float, default=None,
                     help="with --gpu: time budget; cells that would end after it are skipped, and said so (default 420)")
