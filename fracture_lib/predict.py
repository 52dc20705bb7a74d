"""Score new radiographs with the trained runs: body part, fracture probability and decision.

Two stages, as in the original project: the body-part classifier (``models/body_part/<run>``)
routes each input to its part's fracture model (``models/<part>/<run>``), unless the part is
given. An input is an image file, or a study folder (every PNG/JPEG in it, in natural order);
a study's probability is the mean of its images' probabilities (the MURA paper's rule) and it is
routed by the mean of its images' body-part probabilities. Every run is scored with exactly the
preprocessing it was trained with (``PreprocessSettings`` from its ``config.json``, through the
same ``preprocess.load_and_preprocess`` that builds the training cache), and decided at the
threshold saved with it (``evaluation.json`` from notebook 04; 0.5, with a note, when absent).

Bad inputs (a missing path, an unreadable or non-image file, an empty folder, an image smaller
than ``imageio.MIN_IMAGE_SIDE`` pixels on a side, a blank image, no trained model for the body part) give
that input a one-line ``error`` and the other inputs are still scored.

Inputs the runs cannot judge (see ``outliers``): an image whose features lie unusually far from
the training images', or one the body-part classifier is unusually unsure of (thresholds set on
validation; the three rules of a routed input flag at most 1% of ordinary films together), is
still scored but flagged: ``unfamiliar``
is true and a note says why. With ``strict`` (``predict --strict``) a flagged input is an error.

JSON output (``python -m fracture_lib predict --json``): one object per input, one per line::

    {
      "input": str,                     # the path as given
      "kind": "image" | "study" | null, # null when the path could not be read
      "body_part": str | null,          # e.g. "elbow"
      "body_part_probability": float | null,  # the classifier's probability; null with --part
      "body_part_source": "classifier" | "override" | null,
      "body_part_run_dir": str | null,  # the classifier run used (null with --part)
      "run_dir": str | null,            # the fracture model's run folder
      "threshold": float | null,        # decision threshold of that run
      "threshold_source": "evaluation.json" | "default" | null,
      "aggregation": "mean" | "max" | null,   # study rule (the one the threshold was chosen with);
                                        # null for an image input
      "images": [                       # one entry per image (one for an image input)
        {"path": str, "probability": float,
         "decision": "abnormal" | "normal", "gradcam": str | null}   # gradcam: PNG written
      ],
      "probability": float | null,      # the image's, or the study's mean, fracture probability
      "decision": "abnormal" | "normal" | null,   # probability >= threshold is "abnormal"
      "unfamiliar": bool | null,        # flagged by the outlier rules; null when a run has none
      "notes": [str],                   # e.g. default threshold, synthetic training data, why unfamiliar
      "error": str | null               # one line naming the input and the fix; null when scored
    }

A failed input keeps what was found before the failure (for example ``body_part`` when the
predicted part has no trained model); the fields after it are null.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fracture_lib import config, imageio, outliers, runs
from fracture_lib.metrics import DEFAULT_THRESHOLD
from fracture_lib.errors import FractureLibError, ImageReadError, ModelNotFoundError, ParameterError

# File types a study folder is searched for (case-insensitive); other files are ignored.
IMAGE_SUFFIXES = imageio.IMAGE_SUFFIXES
ABNORMAL = "abnormal"
NORMAL = "normal"
# How the notes of ``Predictor._check_familiar`` begin (``--strict`` turns the first two into errors).
UNFAMILIAR_NOTE = "unfamiliar input:"
UNSURE_NOTE = "unsure body part:"
NO_RULE_NOTE = "unfamiliar inputs are not flagged by"
UNFAMILIAR_PREFIXES = (UNFAMILIAR_NOTE, UNSURE_NOTE, NO_RULE_NOTE)


@dataclass
class ImageScore:
    """The fracture probability and decision of one image."""

    path: str
    probability: float
    decision: str
    gradcam: str | None = None
    # The Grad-CAM overlay (uint8 RGB) when it was asked for; not part of the JSON output.
    overlay: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """Return the JSON-ready fields (the overlay array is left out)."""
        return {"path": self.path, "probability": self.probability, "decision": self.decision,
                "gradcam": self.gradcam}


@dataclass
class PredictionResult:
    """Everything ``predict`` says about one input (see the module docstring for the schema)."""

    input: str
    kind: str | None = None
    body_part: str | None = None
    body_part_probability: float | None = None
    body_part_source: str | None = None
    body_part_run_dir: str | None = None
    run_dir: str | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    aggregation: str | None = None
    images: list[ImageScore] = field(default_factory=list)
    probability: float | None = None
    decision: str | None = None
    unfamiliar: bool | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        """Return the result as a JSON-ready dict with the documented keys."""
        result = asdict(self)
        result["images"] = [image.to_dict() for image in self.images]
        return result

    def to_json(self) -> str:
        """Return the result as one line of JSON."""
        return json.dumps(self.to_dict())

    def raise_for_error(self) -> None:
        """Raise ``FractureLibError`` with the one-line message when this input failed."""
        if self.error is not None:
            raise FractureLibError(self.error)


def decide(probability: float, threshold: float) -> str:
    """Return ``"abnormal"`` when ``probability >= threshold``, else ``"normal"``."""
    return ABNORMAL if probability >= threshold else NORMAL


def _natural_key(path: Path) -> list:
    """Sort key that puts image2 before image10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def collect_images(path: str | os.PathLike[str]) -> tuple[str, list[Path]]:
    """Return ``("image", [file])`` or ``("study", [its images in natural order])`` for an input.

    Raises ``ImageReadError`` for a missing path and for a folder without PNG/JPEG images.
    """
    input_path = Path(path).expanduser()
    if input_path.is_file():
        return "image", [input_path]
    if not input_path.exists():
        raise ImageReadError(path, "no such file or folder: check the path")
    if not input_path.is_dir():
        raise ImageReadError(path, "not a regular file or folder: pass an image file or a study folder")
    images = sorted(
        (child for child in input_path.iterdir()
         if child.is_file() and not child.name.startswith(".")
         and child.suffix.lower() in IMAGE_SUFFIXES),
        key=_natural_key,
    )
    if not images:
        subfolders = [child for child in input_path.iterdir() if child.is_dir()]
        hint = (f"it holds {len(subfolders)} sub-folder(s): pass each study folder itself"
                if subfolders else "pass a study folder that holds .png or .jpg images")
        raise ImageReadError(path, f"folder has no images ({', '.join(IMAGE_SUFFIXES)}); {hint}")
    return "study", images


def _read_preprocessed(path: Path, settings) -> np.ndarray:
    """Decode, check and preprocess one image exactly as the training cache does: uint8 (S, S)."""
    from fracture_lib import preprocess

    try:
        image = imageio.load_image(path)
    except FractureLibError:
        raise
    except (OSError, ValueError) as error:
        raise ImageReadError(path, f"not a readable image ({error})") from error
    imageio.check_scorable(image, path)
    return preprocess.preprocess_image(image, settings)


class ScoringModel:
    """A loaded run with a compiled forward pass for fast scoring of one or a few images.

    ``model.predict`` sets up a dataset and a loop on every call (tens of milliseconds); this
    wraps ``model(images, training=False)`` in a ``tf.function`` with a fixed signature, traced
    once when the run is loaded.
    """

    def __init__(self, run) -> None:
        import tensorflow as tf

        self.run = run
        self.settings = run.preprocess
        self.img_size = int(run.preprocess.img_size)
        # The rule that flags unfamiliar inputs (None for runs trained before it was saved).
        self.outlier_rule = outliers.load_rule(run.run_dir)
        # One forward pass gives the pooled features (for that rule) and the output.
        two_outputs = outliers.feature_model(run.model)
        signature = [tf.TensorSpec((None, self.img_size, self.img_size, 1), tf.float32)]
        self._forward = tf.function(lambda images: two_outputs(images, training=False),
                                    input_signature=signature)
        # Trace now, so the first scored image is not charged for it.
        self._forward(tf.zeros((1, self.img_size, self.img_size, 1), tf.float32))

    def preprocess(self, path: Path) -> np.ndarray:
        """Return ``path`` decoded and preprocessed with this run's settings: uint8 (S, S)."""
        return _read_preprocessed(path, self.settings)

    @property
    def tta(self) -> bool:
        """Whether the run averages its predictions over a horizontal flip (``tta`` in its config)."""
        return bool(self.run.config.get("tta", False))

    def scores(self, images: np.ndarray) -> np.ndarray:
        """Return the model's outputs for uint8 images (N, S, S): (N,) sigmoid or (N, C) softmax.

        A run trained with ``tta`` scores each image and its mirror image and averages the two, as
        its validation predictions (and so its threshold) did.
        """
        return self.scores_and_features(images)[0]

    def scores_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``scores`` and the pooled features (N, D) of the unmirrored images."""
        batch = np.asarray(images, dtype=np.float32)[..., np.newaxis]
        features, outputs = (tensor.numpy() for tensor in self._forward(batch))
        if self.tta:
            outputs = (outputs + self._forward(np.ascontiguousarray(batch[:, :, ::-1]))[1].numpy()) / 2.0
        return (outputs[:, 0] if outputs.shape[-1] == 1 else outputs), features


class Predictor:
    """Scores inputs with the runs in ``models_dir``; each run is loaded once and kept.

    ``run_name`` picks the run of every model (None: the latest of each). ``gradcam_dir``: write
    a Grad-CAM overlay PNG per image there; ``keep_overlays``: keep the overlay arrays on the
    results (the notebook shows them) even without writing files. ``strict``: an input flagged
    as unfamiliar (or one a run cannot check) becomes an error instead of a note.
    """

    def __init__(self, models_dir: str | os.PathLike[str] | None = None, run_name: str | None = None,
                 gradcam_dir: str | os.PathLike[str] | None = None, keep_overlays: bool = False,
                 strict: bool = False) -> None:
        self.models_dir = config.resolve_path(models_dir) if models_dir is not None else config.MODELS_DIR
        if not self.models_dir.is_dir():
            raise ModelNotFoundError(
                f"models folder {self.models_dir} does not exist: train first (`make reports` or "
                "`python -m fracture_lib train ...`) or pass --models FOLDER"
            )
        self.run_name = run_name
        self.gradcam_dir = config.resolve_path(gradcam_dir) if gradcam_dir is not None else None
        self.keep_overlays = keep_overlays
        self.strict = strict
        self._loaded: dict[str, ScoringModel | FractureLibError] = {}

    def scoring_model(self, name: str) -> ScoringModel:
        """Return the loaded run of ``name`` (a body part or ``body_part``), loading it once."""
        if name not in self._loaded:
            try:
                self._loaded[name] = ScoringModel(self._load_run(name))
            except FractureLibError as error:
                self._loaded[name] = error
        loaded = self._loaded[name]
        if isinstance(loaded, FractureLibError):
            raise loaded
        return loaded

    def _load_run(self, name: str) -> runs.LoadedRun:
        """Find and load the run of ``name`` in safe mode, or raise ``ModelNotFoundError``."""
        if not runs.run_names(self.models_dir / name):
            raise ModelNotFoundError(runs.missing_model_message(name, self.models_dir))
        return runs.load_run(runs.find_run(name, run_name=self.run_name, models_dir=self.models_dir))

    def trained_parts(self) -> list[str]:
        """The body parts that have at least one trained fracture run here."""
        return sorted(child.name for child in self.models_dir.iterdir()
                      if child.is_dir() and child.name != config.BODY_PART_TARGET and runs.run_names(child))

    def check_part(self, part: str) -> None:
        """Raise ``ParameterError`` for a part that is neither MURA's nor has a trained model here.

        (A MURA part without a model is not a usage error: each input then says which model to train.)
        """
        if part not in config.ALL_BODY_PARTS and not runs.run_names(self.models_dir / part):
            trained = ", ".join(self.trained_parts()) or "none"
            raise ParameterError(f"unknown body part {part!r}: no fracture model was trained for it in "
                                 f"{self.models_dir} (trained: {trained}); train one with "
                                 f"`python -m fracture_lib train --part {part}`")

    def score(self, path: str | os.PathLike[str], part: str | None = None) -> PredictionResult:
        """Score one image file or study folder; a bad input gives a result with ``error`` set.

        ``part`` skips the body-part classifier (an unknown name raises ``ParameterError``).
        """
        if part is not None:
            part = config.parse_body_parts(part)[0]
        result = PredictionResult(input=str(path))
        try:
            self._score_into(result, Path(path).expanduser(), part)
        except FractureLibError as error:
            result.error = f"{path}: {error}" if str(path) not in str(error) else str(error)
        return result

    def score_all(self, paths: Iterable[str | os.PathLike[str]], part: str | None = None) -> list[PredictionResult]:
        """Score every input in turn; one bad input does not stop the others."""
        return [self.score(path, part) for path in paths]

    def _score_into(self, result: PredictionResult, path: Path, part: str | None) -> None:
        """Fill ``result`` step by step, so a failing step leaves what was found before it."""
        kind, image_paths = collect_images(path)
        result.kind = kind
        checks = []
        if part is not None:
            result.body_part, result.body_part_source = part, "override"
        else:
            checks.append(self._route(result, image_paths))
            # Flagged by the classifier already: said even when the routed part has no model.
            result.unfamiliar = True if checks[-1] else None
        # Truncated JPEGs are scored (decoded as the cache decodes them), with a note saying so.
        for image_path in image_paths:
            result.notes.extend(f"{image_path.name}: {note}" for note in imageio.decode_notes(image_path))
        model = self.scoring_model(result.body_part)
        self._describe_run(result, model)
        images = np.stack([model.preprocess(image_path) for image_path in image_paths])
        probabilities, features = model.scores_and_features(images)
        checks.append(self._check_familiar(result, model, image_paths, features))
        # Flagged by any run's rule; unknown when a run has none; else familiar.
        result.unfamiliar = True if True in checks else (None if None in checks else False)
        for image_path, image, probability in zip(image_paths, images, probabilities):
            score = ImageScore(str(image_path), float(probability), decide(float(probability), result.threshold))
            if self.gradcam_dir is not None or self.keep_overlays:
                self._explain(score, model, image)
            result.images.append(score)
        # The MURA rule: a study's probability is the mean of its images' probabilities (or the
        # max, when the run's threshold was chosen that way).
        aggregate = np.max if result.aggregation == "max" else np.mean
        result.probability = float(aggregate(probabilities))
        if kind == "image":
            result.aggregation = None
        result.decision = decide(result.probability, result.threshold)
        if self.strict and result.unfamiliar is not False:
            flagged = [note for note in result.notes if note.startswith(UNFAMILIAR_PREFIXES)]
            result.error = f"{path}: {flagged[0] if flagged else 'cannot be checked'} (--strict)"

    def _check_familiar(self, result: PredictionResult, model: ScoringModel, image_paths: Sequence[Path],
                        features: np.ndarray, max_probability: float | None = None) -> bool | None:
        """Note why the input is unfamiliar to ``model``; True when a rule fired, None when it has no rule."""
        rule = model.outlier_rule
        role = "the body-part classifier" if model.run.config.get("target") == config.BODY_PART_TARGET \
            else f"the {model.run.name} model"
        if rule is None:
            result.notes.append(f"{NO_RULE_NOTE} {role} ({model.run.run_dir} has no {outliers.OUTLIERS_FILENAME}): "
                                "retrain it to add the check")
            return None
        distances = rule.distances(features)
        flagged = False
        for image_path, distance in zip(image_paths, distances):
            if distance > rule.distance_threshold:
                flagged = True
                result.notes.append(
                    f"{UNFAMILIAR_NOTE} {image_path.name} does not look like the films {role} was trained on "
                    f"(feature distance {distance:.1f} > {rule.distance_threshold:.1f}, the farthest "
                    f"{rule.level:.2%} of films like its validation ones): its score may mean nothing")
        if max_probability is not None and rule.unsure(np.array([max_probability]))[0]:
            flagged = True
            result.notes.append(
                f"{UNSURE_NOTE} the classifier's highest probability {max_probability:.2f} is below {rule.probability_threshold:.2f} "
                f"(the least sure {rule.level:.2%} of its validation films): pass --part if you know it")
        return flagged

    def _route(self, result: PredictionResult, image_paths: Sequence[Path]) -> bool | None:
        """Pick the body part with the classifier (the argmax of the images' mean probabilities).

        Returns what ``_check_familiar`` said about the input to the classifier.
        """
        router = self.scoring_model(config.BODY_PART_TARGET)
        classes = list(router.run.classes or router.run.config.get("classes") or [])
        images = np.stack([router.preprocess(image_path) for image_path in image_paths])
        probabilities, features = router.scores_and_features(images)
        mean_probabilities = np.atleast_2d(probabilities).mean(axis=0)
        if len(classes) != mean_probabilities.shape[-1]:
            raise ModelNotFoundError(
                f"body-part classifier {router.run.run_dir} lists {len(classes)} classes but outputs "
                f"{mean_probabilities.shape[-1]}: retrain it with `python -m fracture_lib train --target body_part`"
            )
        best = int(np.argmax(mean_probabilities))
        result.body_part = str(classes[best])
        result.body_part_probability = float(mean_probabilities[best])
        result.body_part_source = "classifier"
        result.body_part_run_dir = str(router.run.run_dir)
        familiar_check = self._check_familiar(result, router, image_paths, features,
                                              max_probability=result.body_part_probability)
        # MURA's folders name the study type (XR_WRIST, ...): say so when the router disagrees.
        named = re.search(r"XR_([A-Z]+)", str(image_paths[0]))
        if named and named.group(1).lower() != result.body_part:
            result.notes.append(
                f"the path says {named.group(0)} but the classifier chose {result.body_part!r} "
                f"(it knows {', '.join(classes)}): pass --part if you know the body part"
            )
        return familiar_check

    def _describe_run(self, result: PredictionResult, model: ScoringModel) -> None:
        """Record the fracture run, its threshold and the notes a reader needs about them."""
        run = model.run
        result.run_dir = str(run.run_dir)
        result.aggregation = run.aggregation
        # load_run has read (and checked) evaluation.json when there is one.
        if (run.run_dir / runs.EVALUATION_FILENAME).is_file():
            result.threshold, result.threshold_source = float(run.threshold), runs.EVALUATION_FILENAME
        else:
            result.threshold, result.threshold_source = DEFAULT_THRESHOLD, "default"
            result.notes.append(
                f"no {runs.EVALUATION_FILENAME} in {run.run_dir}: decided at the default threshold "
                f"{DEFAULT_THRESHOLD}; "
                "run notebook 04 (`make reports`) to choose one on the validation split"
            )
        if runs.trained_on_synthetic_data(run):
            result.notes.append(
                f"{run.run_dir} was trained on synthetic demo data: its probabilities say nothing "
                "about real radiographs"
            )
        if result.body_part_source == "classifier":
            router = self.scoring_model(config.BODY_PART_TARGET)
            if runs.trained_on_synthetic_data(router.run) and not runs.trained_on_synthetic_data(run):
                result.notes.append(f"the body-part classifier {router.run.run_dir} was trained on synthetic demo data")

    def _explain(self, score: ImageScore, model: ScoringModel, image: np.ndarray) -> None:
        """Compute the Grad-CAM overlay of one image; write it when a folder was given.

        The heatmap is computed on the model input, then the padding is cut off and it is laid
        over the original image at full resolution, where a reader can see the bone in detail.
        """
        from fracture_lib import explain, preprocess

        heatmap = explain.gradcam(model.run.model, image, model.run.config.get("last_conv_layer"))
        original = preprocess.load_image(score.path)
        overlay = explain.overlay(original, heatmap_on_original(heatmap, original.shape, model.img_size))
        if self.keep_overlays:
            score.overlay = overlay
        if self.gradcam_dir is not None:
            score.gradcam = str(write_png(overlay, self.gradcam_dir / gradcam_filename(score.path)))


def heatmap_on_original(heatmap: np.ndarray, original_shape: Sequence[int], img_size: int) -> np.ndarray:
    """Map a heatmap over the square model input back onto the original image (H, W).

    Undoes ``preprocess.preprocess_image``'s letterbox: crops the padding, resizes to (H, W).
    """
    import cv2

    from fracture_lib import preprocess

    height, width = int(original_shape[0]), int(original_shape[1])
    scale, pad_top, pad_left = preprocess.letterbox_geometry(height, width, img_size)
    content_height = max(1, int(round(height * scale)))
    content_width = max(1, int(round(width * scale)))
    content = np.asarray(heatmap, dtype=np.float32)[pad_top:pad_top + content_height,
                                                    pad_left:pad_left + content_width]
    return cv2.resize(content, (width, height), interpolation=cv2.INTER_LINEAR)


def gradcam_filename(image_path: str | os.PathLike[str]) -> str:
    """A readable, unique PNG name for an image's overlay: its last folders, stem and a hash.

    ``.../patient11185/study1_positive/image1.png`` gives
    ``patient11185_study1_positive_image1_<8 hex>.png``; the hash of the absolute path keeps two
    images with the same name in different folders apart.
    """
    absolute = Path(image_path).expanduser().resolve()
    parts = [*absolute.parent.parts[-2:], absolute.stem]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(part for part in parts if part not in ("/", "")))
    digest = hashlib.sha1(str(absolute).encode("utf-8")).hexdigest()[:8]
    return f"{readable}_{digest}.png"


def write_png(image: np.ndarray, path: Path) -> Path:
    """Write an RGB or grey uint8 image as PNG atomically (temporary name, then ``os.replace``)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    temporary = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    if not cv2.imwrite(str(temporary), pixels):
        raise ImageReadError(path, "could not write the Grad-CAM overlay: check the folder is writable")
    os.replace(temporary, path)
    return path


def predict_paths(paths: Iterable[str | os.PathLike[str]], models_dir: str | os.PathLike[str] | None = None,
                  part: str | None = None, run_name: str | None = None,
                  gradcam_dir: str | os.PathLike[str] | None = None, strict: bool = False) -> list[PredictionResult]:
    """Score image files and study folders; bad inputs get ``error`` set, the others are scored.

    ``strict``: inputs flagged as unfamiliar (see ``outliers``) get ``error`` set too.

    Raises ``ModelNotFoundError`` when ``models_dir`` does not exist and ``ParameterError`` for an
    unknown ``part`` (usage errors that concern every input).
    """
    if part is not None:
        part = config.parse_body_parts(part)[0]  # a usage error: fail before loading anything
    predictor = Predictor(models_dir, run_name=run_name, gradcam_dir=gradcam_dir, strict=strict)
    if part is not None:
        predictor.check_part(part)
    return predictor.score_all(paths, part=part)


def demo_image_path(data_dir: str | os.PathLike[str] | None = None, body_part: str = "elbow",
                    label: int = 1, split: str = "test") -> Path:
    """Return the first image of ``body_part`` with ``label`` in ``split`` of a data root.

    When ``split`` has none (a tiny demo set may lack a part in its test split) the other splits
    are tried, held-out ones first. ``data_dir=None`` means the real MURA when present, else the
    demo set (generated if missing).
    """
    from fracture_lib import datasets, synthetic

    if data_dir is None and not config.real_data_available():
        source = datasets.resolve_source(synthetic.ensure_demo_dataset())
    else:
        source = datasets.resolve_source(data_dir)
    index = datasets.build_index(source, parts=[body_part])
    for candidate in dict.fromkeys((split, "test", "val", "train")):
        rows = index[(index["split"] == candidate) & (index["label"] == label)]
        if not rows.empty:
            return source.root / rows["path"].iloc[0]
    raise ParameterError(f"no {body_part!r} image with label {label} in {source.location}: pass IMAGE_PATH")
