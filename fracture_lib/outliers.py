"""Telling inputs a run cannot judge: unfamiliar images, and a body-part classifier that is unsure.

A classifier answers every input with a probability, also a photograph, a page of noise or a
film of a body part it never saw. ``predict`` therefore checks each image against what the run
was trained on, with rules fitted when the run is trained and saved beside it (``outliers.npz``):

- **Unfamiliar image**: the Mahalanobis distance of the image's pooled features (the ``pool``
  layer, the input of the classifier head) from the training images' features, with a
  Ledoit-Wolf shrunk covariance. Every run (fracture models and the classifier) has this rule.
- **Unsure classifier** (the body-part classifier only): its highest class probability.

**One budget for the whole check.** An image that ``predict`` routes meets three rules: the
classifier's two and its fracture model's distance. ``FALSE_ALARM_TARGET`` is the share of
ordinary films (like the validation ones) that all three together may flag; each rule gets a
third of it (``RULE_LEVEL``), so by the union bound the check flags at most that share.

**Thresholds from validation, by estimators that hold up with few films.** A 0.33% tail cannot be
read off the 100-400 validation films of a real set as a plain quantile (it would be the largest
value, or beyond it), and the plain 99th percentile of half the validation films flagged 1.7-2.0%
of the other half on FracAtlas, not 1%. So:

- the distance threshold comes from a log-normal fit of the validation distances
  (``exp(mean + z * std)`` of their logarithms), which flagged 0.6-1.2% of held-out validation
  films at a 1% level on FracAtlas;
- the probability threshold is the ``k``-th lowest validation probability with
  ``k = max(1, floor((n + 1) * RULE_LEVEL))`` (the conformal order statistic; with a few hundred
  films, the lowest).

Both are chosen on validation data only; the false-alarm rates on the test splits are measured
in ``docs/real-data.md`` (section 6). A flagged input gets a note (``predict --strict`` makes it
an error); it is a warning sign, not a diagnosis of what the input is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracture_lib.errors import ModelNotFoundError
from fracture_lib.files import replace_path

OUTLIERS_FILENAME = "outliers.npz"
# The layer whose output is the image's feature vector (the classifier head's input).
FEATURE_LAYER = "pool"
# The share of ordinary films the whole check of one routed input may flag ...
FALSE_ALARM_TARGET = 0.01
# ... split evenly over the rules such an input meets (classifier distance and probability, fracture distance).
RULES_PER_INPUT = 3
RULE_LEVEL = FALSE_ALARM_TARGET / RULES_PER_INPUT


@dataclass
class OutlierRule:
    """The rules of one run: feature distance, and (classifier only) the lowest confident probability.

    ``level`` is the share of ordinary films each threshold was set to flag.
    """

    mean: np.ndarray
    precision: np.ndarray
    distance_threshold: float
    probability_threshold: float | None
    n_train: int
    n_val: int
    level: float = RULE_LEVEL

    def distances(self, features: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance of each feature row (N, D) from the training features."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        squared = np.einsum("nd,de,ne->n", centred, self.precision, centred)
        return np.sqrt(np.maximum(squared, 0.0))

    def unfamiliar(self, features: np.ndarray) -> np.ndarray:
        """True for each image whose features lie farther than the validation threshold."""
        return self.distances(features) > self.distance_threshold

    def unsure(self, max_probabilities: np.ndarray) -> np.ndarray:
        """True where the classifier's highest probability is below its validation threshold."""
        if self.probability_threshold is None:
            return np.zeros(len(np.atleast_1d(max_probabilities)), dtype=bool)
        return np.atleast_1d(max_probabilities) < self.probability_threshold


def feature_model(model: Any) -> Any:
    """A model with two outputs: the pooled features and the run's own output.

    A model with the cell head (``models.HEADS``) has no pooling layer: its last convolutional
    layer is max-pooled here, as the compact networks' pooled head does.
    """
    import keras

    from fracture_lib.models import last_conv_layer_name

    names = {layer.name for layer in model.layers}
    if FEATURE_LAYER in names:
        features = model.get_layer(FEATURE_LAYER).output
    else:
        features = keras.layers.GlobalMaxPooling2D()(model.get_layer(last_conv_layer_name(model)).output)
    return keras.Model(model.input, [features, model.output])


def image_features(model: Any, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (N, D) and outputs of uint8 images (N, S, S), in batches."""
    two_outputs = feature_model(model)
    features, outputs = [], []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=np.float32)[..., np.newaxis]
        batch_features, batch_outputs = two_outputs(batch, training=False)
        features.append(np.asarray(batch_features, dtype=np.float32))
        outputs.append(np.asarray(batch_outputs, dtype=np.float32))
    return np.concatenate(features), np.concatenate(outputs)


def lognormal_upper_threshold(values: np.ndarray, level: float) -> float:
    """The value a log-normal fit of positive ``values`` exceeds with probability ``level``."""
    from statistics import NormalDist

    logs = np.log(np.maximum(np.asarray(values, dtype=np.float64), np.finfo(np.float64).tiny))
    spread = float(np.std(logs, ddof=1)) if len(logs) > 1 else 0.0
    return float(np.exp(np.mean(logs) + NormalDist().inv_cdf(1.0 - level) * spread))


def lower_order_threshold(values: np.ndarray, level: float) -> float:
    """The ``k``-th lowest of ``values``, ``k = max(1, floor((n + 1) * level))`` (flag below it)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    position = max(1, int(np.floor((len(ordered) + 1) * level)))
    return float(ordered[min(position, len(ordered)) - 1])


def fit_rule(train_features: np.ndarray, val_features: np.ndarray, val_outputs: np.ndarray | None = None,
             level: float = RULE_LEVEL) -> OutlierRule:
    """Fit the distance rule on training features and set both thresholds on validation.

    ``val_outputs`` are the classifier's class probabilities (N, C) on validation, for the
    probability rule; None (a fracture model) leaves that rule out. ``level``: the share of
    films like the validation ones each threshold is set to flag.
    """
    from sklearn.covariance import LedoitWolf

    if not 0.0 < level < 0.5:
        raise ValueError(f"level must lie between 0 and 0.5, got {level}")
    if len(train_features) < 2 or len(val_features) < 1:
        raise ValueError("the outlier rule needs at least two training and one validation image")
    estimator = LedoitWolf().fit(np.asarray(train_features, dtype=np.float64))
    rule = OutlierRule(mean=estimator.location_, precision=estimator.precision_, distance_threshold=np.inf,
                       probability_threshold=None, n_train=len(train_features), n_val=len(val_features), level=level)
    rule.distance_threshold = lognormal_upper_threshold(rule.distances(val_features), level)
    if val_outputs is not None and np.ndim(val_outputs) == 2 and np.shape(val_outputs)[1] > 1:
        rule.probability_threshold = lower_order_threshold(np.max(val_outputs, axis=1), level)
    return rule


def fit_run_rule(model: Any, train_images: np.ndarray, val_images: np.ndarray, batch_size: int = 64) -> OutlierRule:
    """``fit_rule`` from a model and its training and validation images (what ``train`` calls)."""
    train_features, _ = image_features(model, train_images, batch_size)
    val_features, val_outputs = image_features(model, val_images, batch_size)
    return fit_rule(train_features, val_features, val_outputs if val_outputs.shape[-1] > 1 else None)


def save_rule(rule: OutlierRule, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``outliers.npz`` into the run folder (through a temporary file)."""
    path = Path(run_dir) / OUTLIERS_FILENAME
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "wb") as handle:
        np.savez(handle, mean=rule.mean, precision=rule.precision, distance_threshold=rule.distance_threshold,
                 probability_threshold=np.nan if rule.probability_threshold is None else rule.probability_threshold,
                 n_train=rule.n_train, n_val=rule.n_val, level=rule.level)
    return replace_path(staging, path)


def load_rule(run_dir: str | os.PathLike[str]) -> OutlierRule | None:
    """The run's rule, or None when it was trained before rules were saved.

    A file that cannot be read raises ``ModelNotFoundError`` naming it: scoring without the check
    would hide that the run is damaged.
    """
    path = Path(run_dir) / OUTLIERS_FILENAME
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            probability = float(saved["probability_threshold"])
            # Files written before the shared budget set each rule at 1%.
            level = float(saved["level"]) if "level" in saved.files else 0.01
            return OutlierRule(mean=saved["mean"], precision=saved["precision"],
                               distance_threshold=float(saved["distance_threshold"]),
                               probability_threshold=None if np.isnan(probability) else probability,
                               n_train=int(saved["n_train"]), n_val=int(saved["n_val"]), level=level)
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise ModelNotFoundError(f"cannot read {path} ({type(error).__name__}): train the run again, or delete "
                                 "the file to score without the unfamiliar-input check") from None
