"""The parameters of one training run: ``TrainConfig``, its checks, and the settings it derives.

Every value a run trains with lives here and is saved to the run's ``config.json``; ``validate``
refuses any value that cannot work with a one-line ``ParameterError`` before training starts.
``fracture_lib.train`` runs a ``TrainConfig``; ``fracture_lib.parameters`` reads one from a
parameter file and the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fracture_lib import config, crops, device_augment, distribute, recipe
from fracture_lib.errors import ParameterError
from fracture_lib.models import COMPACT_ARCHITECTURES, MINIMUM_SIZE, check_architecture, check_head
from fracture_lib.pipeline import AugmentSettings
from fracture_lib.preprocess import PreprocessSettings

@dataclass
class TrainConfig:
    """Every parameter of one training run (saved to ``config.json``)."""

    target: str = config.FRACTURE_TARGET
    body_part: str | None = "elbow"
    arch: str = "small_cnn"
    img_size: int = 128
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 3e-3
    weights: str | None = None
    seed: int = config.DEFAULT_SEED  # initial weights, shuffling and augmentation
    split_seed: int = config.DEFAULT_SEED  # the train/val (and FracAtlas test) split, apart from `seed`
    data_dir: str | None = None
    run_name: str = "default"
    clahe: bool = False
    flip: bool = True
    rotation_degrees: float = 30.0
    zoom: float = 0.0
    contrast: float = 0.0
    translate: float = 0.0
    brightness: float = 0.0
    gamma: float = 0.0
    patience: int = 12
    optimizer: str = "adam"  # adam or adamw (see fracture_lib.recipe)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    schedule: str = "plateau"  # plateau (the LR divided by 10) or cosine (warm-up, then cosine decay)
    warmup_epochs: int = 0
    ema_momentum: float = 0.0  # 0: no moving average of the weights
    loss: str = "bce"  # bce or focal
    focal_gamma: float = 2.0
    tta: bool = False  # average the predictions over a horizontal flip (validation, evaluate, predict)
    pool_parts: tuple[str, ...] = ()  # other parts whose training films also train a fracture model; ("all",): every part
    val_fraction: float = config.DEFAULT_VAL_FRACTION
    dropout_rate: float | None = None  # None: the architecture's default (models.DEFAULT_DROPOUT_RATE)
    parts: tuple[str, ...] = config.DEFAULT_BODY_PARTS
    keep_truncated: bool = False  # keep truncated JPEGs in the index (see fracture_lib.imageio)
    precision: str = "float32"  # float32, mixed_float16 or mixed_bfloat16 (see fracture_lib.distribute)
    jit_compile: bool = False  # compile the training step with XLA
    augment_on: str = "cpu"  # cpu (OpenCV in tf.data) or device (in the training step, see fracture_lib.device_augment)
    lr_scaling: str = "linear"  # linear: learning_rate is one replica's, times the replicas; none: unchanged
    box_loss_weight: float = 0.0  # > 0: a training-only head learns the fracture boxes (see fracture_lib.box_supervision)
    head: str = "pooled"  # pooled (features pooled, one dense unit) or cells (the highest cell score; models.HEADS)
    train_crop: int = 0  # > 0: train on crops of this side from films cached at img_size, score whole films (see fracture_lib.crops)

    def validate(self) -> None:
        """Raise ``ParameterError`` for any value that cannot work."""
        if self.target not in (config.FRACTURE_TARGET, config.BODY_PART_TARGET):
            raise ParameterError(f"target={self.target!r}: choose 'fracture' or 'body_part'")
        if self.target == config.FRACTURE_TARGET:
            if not self.body_part:
                raise ParameterError("a fracture model needs a body part: pass --part elbow (or hand, shoulder, ...)")
            self.body_part = config.parse_body_parts(self.body_part)[0]
        else:
            self.body_part = None
            self.parts = config.parse_body_parts(self.parts)
            if len(self.parts) < 2:
                raise ParameterError("the body-part classifier needs at least two parts, e.g. --parts elbow,hand")
        for name in ("img_size", "epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ParameterError(f"{name}={value!r} must be a positive integer")
        for name in ("seed", "split_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ParameterError(f"{name}={value!r} must be a whole number, 0 or more")
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)):
            raise ParameterError(f"learning_rate={self.learning_rate!r} must be a number, e.g. 0.001")
        if not 0 < self.learning_rate < 1:
            raise ParameterError(f"learning_rate={self.learning_rate} must be between 0 and 1, e.g. 0.001")
        if not isinstance(self.tta, (bool, np.bool_)):
            raise ParameterError(f"tta={self.tta!r} must be true or false")
        recipe.check_recipe(self.optimizer, self.schedule, self.loss, self.weight_decay, self.warmup_epochs,
                            self.ema_momentum, self.focal_gamma, self.epochs)
        if self.loss == "focal" and self.target != config.FRACTURE_TARGET:
            raise ParameterError("loss=focal applies to fracture models: train the body-part classifier with loss=bce")
        self.pool_parts = tuple(config.parse_body_parts(self.pool_parts)) if self.pool_parts else ()
        if self.pool_parts and self.target != config.FRACTURE_TARGET:
            raise ParameterError("pool_parts applies to fracture models: the body-part classifier uses --parts")
        if not self.run_name or any(character in self.run_name for character in "/\\") or self.run_name.startswith("."):
            raise ParameterError(f"run_name={self.run_name!r} must be a plain folder name, e.g. 'default'")
        if self.weights in ("", "None", "none", "null"):
            self.weights = None
        check_architecture(self.arch, self.img_size, self.weights)
        check_head(self.head, 1 if self.target == config.FRACTURE_TARGET else len(self.parts))
        self.augment_settings()  # validates the augmentation values
        distribute.check_settings(self.precision, self.jit_compile, self.lr_scaling)
        if self.augment_on not in device_augment.PLACES:
            raise ParameterError(f"augment_on={self.augment_on!r} is unknown: choose {' or '.join(device_augment.PLACES)}")
        self._check_box_loss_weight()
        self._check_train_crop()
        self.preprocess_settings()

    def _check_train_crop(self) -> None:
        """Crops need a fracture model, a fully convolutional compact network and augmentation in the pipeline."""
        crops.check_crop(self.train_crop, self.img_size, MINIMUM_SIZE[self.arch])
        if not self.train_crop:
            return
        if self.target != config.FRACTURE_TARGET:
            raise ParameterError("train_crop applies to fracture models: train the body-part classifier with train_crop=0")
        if self.arch not in COMPACT_ARCHITECTURES:
            raise ParameterError(f"train_crop needs a network that scores any input size ({', '.join(COMPACT_ARCHITECTURES)}), "
                                 f"not {self.arch}: set arch=small_cnn or train_crop=0")
        if self.augment_on != "cpu":
            raise ParameterError("train_crop crops in the input pipeline: set augment_on=cpu")
        if self.box_loss_weight > 0:
            raise ParameterError("train_crop and box_loss_weight cannot be combined (the box grid is the whole film's): "
                                 "set one of them to 0")

    def _check_box_loss_weight(self) -> None:
        """Box supervision needs a number, a fracture model, and augmentation in the pipeline (where boxes move too)."""
        value = self.box_loss_weight
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 100.0:
            raise ParameterError(f"box_loss_weight={value!r} must be a number in [0, 100), e.g. 1.0 (0: off)")
        if value > 0 and self.target != config.FRACTURE_TARGET:
            raise ParameterError("box_loss_weight applies to fracture models: train the body-part classifier with 0")
        if value > 0 and self.augment_on != "cpu":
            raise ParameterError("box_loss_weight needs augment_on=cpu: the boxes are moved with the image in the "
                                 "input pipeline")

    @property
    def name(self) -> str:
        """The folder under ``models/``: the body part, or ``body_part`` for the classifier."""
        return self.body_part if self.target == config.FRACTURE_TARGET else config.BODY_PART_TARGET

    def preprocess_settings(self) -> PreprocessSettings:
        """The preprocessing this run trains with (and ``predict`` must repeat)."""
        return PreprocessSettings(img_size=int(self.img_size), clahe=bool(self.clahe))

    def augment_settings(self) -> AugmentSettings:
        """The training-time augmentation."""
        return AugmentSettings(flip=self.flip, rotation_degrees=self.rotation_degrees, zoom=self.zoom,
                               contrast=self.contrast, translate=self.translate, brightness=self.brightness,
                               gamma=self.gamma)

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a JSON-ready dictionary."""
        values = asdict(self)
        values["parts"] = list(self.parts)
        values["pool_parts"] = list(self.pool_parts)
        return values

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of every parameter."""
        return tuple(cls.__dataclass_fields__)
