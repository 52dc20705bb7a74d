"""Model architectures: two compact networks for CPUs and the ImageNet backbones used on MURA.

Every model takes raw greyscale images ``(S, S, 1)`` in 0..255 (what the input pipeline yields)
and does its own input handling as layers: it repeats grey to three channels when the backbone
needs colour input and normalises the way that backbone was trained. So the pipeline, the
evaluation and ``predict`` never need to know which backbone a run used. Backbones are built on
the model's own tensors, so their layers sit in one flat graph and Grad-CAM can reach the last
convolutional layer (``last_conv_layer_name``).
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, Callable

import keras

from fracture_lib.errors import FractureLibError, ParameterError

ARCHITECTURES = ("small_cnn", "small_cnn_patch4", "resnet_small", "densenet169", "densenet121", "resnet50", "efficientnetb0", "mobilenetv2")

# ImageNet statistics in 0..1 (DenseNet, "torch" mode) and caffe-style BGR means in 0..255 (ResNet50).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

# The file Keras downloads for each backbone's ImageNet weights without the classifier top
# (MobileNetV2's name also depends on the input size: see ``imagenet_weights_file``).
WEIGHT_FILES = {
    "densenet169": "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "efficientnetb0": "efficientnetb0_notop.h5",
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
}
WEIGHT_URLS = {
    "densenet169": "https://storage.googleapis.com/tensorflow/keras-applications/densenet/",
    "densenet121": "https://storage.googleapis.com/tensorflow/keras-applications/densenet/",
    "resnet50": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
    "efficientnetb0": "https://storage.googleapis.com/keras-applications/",
    "mobilenetv2": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
}
# MobileNetV2 has ImageNet weights trained at these sizes; Keras uses the 224 px ones otherwise.
MOBILENET_V2_WEIGHT_SIZES = (96, 128, 160, 192, 224)
# The compact networks built here (no ImageNet weights); they end in global max pooling.
COMPACT_ARCHITECTURES = ("small_cnn", "small_cnn_patch4", "resnet_small")
# Dropout before the classifier. The compact networks have none: each of their max-pooled features
# is a detector that fires on a small finding, and dropping detectors at random slowed small_cnn's
# training several-fold on the demo data; the wide backbones use the common 0.3.
DEFAULT_DROPOUT_RATE = {arch: (0.0 if arch in COMPACT_ARCHITECTURES else 0.3) for arch in ARCHITECTURES}
# How a fracture model turns the last convolutional layer into one probability: "pooled" pools the
# features over the image, then one dense unit scores them; "cells" scores every cell of the layer
# with one 1 x 1 convolution (the map ``box_supervision`` trains on fracture boxes) and the image's
# score is its highest cell's, so a film is as abnormal as its most suspicious region.
HEADS = ("pooled", "cells")
# Batch-norm momentum of layers trained from random weights (``_conv_block``, and backbones without weights).
FROM_SCRATCH_BATCH_NORM_MOMENTUM = 0.9
CELL_MAP_LAYER = "fracture_map"
MINIMUM_SIZE = {"small_cnn": 16, "small_cnn_patch4": 32, "resnet_small": 32, "densenet169": 32, "densenet121": 32, "resnet50": 32,
                "efficientnetb0": 32, "mobilenetv2": 32}


def _conv_block(features: Any, filters: int, name: str, seed: int, strides: int = 1) -> Any:
    """Convolution (3x3, no bias, He-initialised from ``seed``), batch normalisation and ReLU."""
    initializer = keras.initializers.HeNormal(seed=seed)
    features = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                   kernel_initializer=initializer, name=f"{name}_conv")(features)
    features = keras.layers.BatchNormalization(momentum=FROM_SCRATCH_BATCH_NORM_MOMENTUM, name=f"{name}_bn")(features)
    return keras.layers.ReLU(name=name)(features)


def _small_cnn_features(images: Any, seed: int, patch_stem: bool = False) -> Any:
    """A compact conv net (82k parameters) sized for a 2-core CPU at 128 px.

    A strided stem halves the resolution once, three conv blocks each followed by max pooling
    widen the features, and the final block, named ``last_conv``, is Grad-CAM's target. At
    128 px its feature map is 8 x 8, fine enough to localise a fracture line.

    With ``patch_stem`` (``small_cnn_patch4``) the stem is a 4 x 4 convolution with stride 4 and
    24 filters instead: each 4 x 4 patch of pixels becomes one position of 24 features, so a film
    at twice the side costs about what ``small_cnn`` costs at its side, and the first layer still
    sees every pixel (a thin fracture line that resizing to half the side would blur away).
    """
    # Each layer gets its own seed: one seeded initializer would repeat the same random numbers.
    features = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(images)
    if patch_stem:
        features = keras.layers.Conv2D(24, 4, strides=4, padding="same", use_bias=False, name="stem_conv",
                                       kernel_initializer=keras.initializers.HeNormal(seed=seed))(features)
        features = keras.layers.BatchNormalization(momentum=FROM_SCRATCH_BATCH_NORM_MOMENTUM, name="stem_bn")(features)
        features = keras.layers.ReLU(name="stem")(features)
    else:
        features = _conv_block(features, 16, "stem", seed, strides=2)
    for stage, filters in enumerate((16, 32, 64), start=1):
        features = _conv_block(features, filters, f"block{stage}", seed + stage)
        features = keras.layers.MaxPooling2D(2, name=f"block{stage}_pool")(features)
    return _conv_block(features, 96, "last_conv", seed + 4)


def _residual_block(features: Any, filters: int, name: str, seed: int, strides: int = 1) -> Any:
    """A basic residual block: two 3x3 convolutions and a shortcut (projected when the shape changes)."""
    initializer = keras.initializers.HeNormal(seed=seed + 50)
    residual = _conv_block(features, filters, f"{name}_a", seed, strides=strides)
    residual = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=initializer,
                                   name=f"{name}_b_conv")(residual)
    residual = keras.layers.BatchNormalization(momentum=FROM_SCRATCH_BATCH_NORM_MOMENTUM, name=f"{name}_b_bn")(residual)
    shortcut = features
    if strides != 1 or features.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                       kernel_initializer=keras.initializers.HeNormal(seed=seed + 75),
                                       name=f"{name}_shortcut_conv")(features)
        shortcut = keras.layers.BatchNormalization(momentum=FROM_SCRATCH_BATCH_NORM_MOMENTUM, name=f"{name}_shortcut_bn")(shortcut)
    features = keras.layers.Add(name=f"{name}_add")([residual, shortcut])
    return keras.layers.ReLU(name=name)(features)


def _resnet_small_features(images: Any, seed: int) -> Any:
    """A compact residual network (about 0.89 M parameters) for real films at 192-320 px on a CPU.

    A strided stem and max pooling bring the input to a quarter of its side, then four stages of
    one residual block each (32, 64, 128 and 192 filters; every stage after the first halves the
    resolution). The last stage, named ``last_conv``, is Grad-CAM's target: 8 x 8 at 256 px.
    """
    features = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(images)
    features = _conv_block(features, 24, "stem", seed, strides=2)
    features = keras.layers.MaxPooling2D(2, name="stem_pool")(features)
    for stage, filters in enumerate((32, 64, 128), start=1):
        features = _residual_block(features, filters, f"stage{stage}", seed + 10 * stage, strides=1 if stage == 1 else 2)
    return _residual_block(features, 192, "last_conv", seed + 40, strides=2)


def _grey_to_rgb(images: Any) -> Any:
    """Repeat the single grey channel three times (ImageNet backbones expect colour input)."""
    return keras.layers.Concatenate(axis=-1, name="grey_to_rgb")([images, images, images])


def _normalise_torch(rgb: Any) -> Any:
    """DenseNet's normalisation: scale to 0..1, subtract the ImageNet mean, divide by its std."""
    scaled = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(rgb)
    variance = [value ** 2 for value in IMAGENET_STD]
    return keras.layers.Normalization(mean=list(IMAGENET_MEAN), variance=variance, name="imagenet_normalise")(scaled)


def _normalise_caffe(rgb: Any) -> Any:
    """ResNet50's normalisation: BGR means subtracted, no scaling (grey is the same in RGB and BGR)."""
    return keras.layers.Normalization(mean=list(CAFFE_BGR_MEAN), variance=[1.0, 1.0, 1.0],
                                      name="caffe_normalise")(rgb)


def _normalise_minus_one_to_one(rgb: Any) -> Any:
    """MobileNetV2's normalisation: 0..255 to -1..1."""
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(rgb)


def _backbone_builders() -> dict[str, tuple[Callable[..., Any], Callable[[Any], Any]]]:
    """Each backbone's Keras constructor and input normalisation."""
    applications = keras.applications
    return {
        "densenet169": (applications.DenseNet169, _normalise_torch),
        "densenet121": (applications.DenseNet121, _normalise_torch),
        "resnet50": (applications.ResNet50, _normalise_caffe),
        # EfficientNet rescales and normalises inside the network: it expects 0..255.
        "efficientnetb0": (applications.EfficientNetB0, lambda rgb: rgb),
        "mobilenetv2": (applications.MobileNetV2, _normalise_minus_one_to_one),
    }


def imagenet_weights_file(arch: str, img_size: int) -> str:
    """Return the file name Keras downloads (into ``~/.keras/models/``) for a backbone's ImageNet weights."""
    if arch not in WEIGHT_FILES:
        raise ParameterError(f"{arch} has no ImageNet weights: choose from {', '.join(WEIGHT_FILES)}")
    if arch == "mobilenetv2":
        rows = img_size if img_size in MOBILENET_V2_WEIGHT_SIZES else 224
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    return WEIGHT_FILES[arch]


def _resolve_backbone_weights(arch: str, img_size: int, weights: str | None) -> str | None:
    """Return what to pass as the backbone's ``weights``: None, 'imagenet' or a notop file path."""
    if weights is None:
        return None
    if weights == "imagenet":
        # Use a file already placed in the Keras cache folder, so no download is attempted.
        keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
        cached = keras_home / "models" / imagenet_weights_file(arch, img_size)
        return str(cached) if cached.is_file() else "imagenet"
    return weights


def _imagenet_error(arch: str, img_size: int, error: Exception) -> FractureLibError:
    """The message shown when ImageNet weights cannot be downloaded."""
    filename = imagenet_weights_file(arch, img_size)
    return FractureLibError(
        f"cannot download ImageNet weights for {arch} ({type(error).__name__}): on a machine with internet, "
        f"download {WEIGHT_URLS[arch]}{filename} and place it in ~/.keras/models/{filename}, "
        f"or train with weights=None"
    )


def _weights_file_error(path: str, expected: str, error: Exception) -> FractureLibError:
    """The message shown when a weights file exists but cannot be loaded into the model."""
    reason = " ".join(str(error).split())[:200]
    return FractureLibError(f"cannot load weights from {path} ({type(error).__name__}: {reason}): "
                            f"pass {expected}, or weights=None")


def _is_integer(value: object) -> bool:
    """Tell whether ``value`` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _split_weights(arch: str, weights: str | os.PathLike[str] | None) -> tuple[str | None, str | None]:
    """Check ``weights`` and return (what the backbone loads, a whole-model weights file to load after).

    Empty strings and "none" (as parameters from notebooks and the CLI arrive) mean no weights.
    """
    if weights is None or str(weights).strip().lower() in ("", "none", "null"):
        return None, None
    if str(weights).strip().lower() == "imagenet":
        if arch in COMPACT_ARCHITECTURES:
            raise ParameterError(f"{arch} has no ImageNet weights: use weights=None, or a backbone such as densenet169")
        return "imagenet", None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FractureLibError(f"weights file {path} not found: check the path, or use weights=None")
    if path.name.endswith(".weights.h5"):
        return None, str(path)
    if arch in COMPACT_ARCHITECTURES:
        raise ParameterError(f"{arch} has no backbone to load {path} into: pass a whole-model .weights.h5 file")
    return str(path), None


def check_architecture(arch: str, img_size: int, weights: str | os.PathLike[str] | None = None) -> None:
    """Raise ``ParameterError`` for an unknown architecture, an input too small for it, or weights it cannot take.

    Cheap (nothing is built or loaded), so a run checks it before indexing and caching its data.
    """
    if arch not in ARCHITECTURES:
        raise ParameterError(f"unknown architecture {arch!r}: choose from {', '.join(ARCHITECTURES)}")
    if not _is_integer(img_size) or img_size < MINIMUM_SIZE[arch]:
        raise ParameterError(f"img_size={img_size!r} is too small for {arch}: use at least {MINIMUM_SIZE[arch]} pixels")
    # ImageNet weights the architecture cannot take, or a weights file that is not there.
    _split_weights(arch, weights)


def build_model(arch: str, img_size: int, weights: str | None = None, num_classes: int = 1,
                dropout_rate: float | None = None, seed: int = 42, head: str = "pooled",
                any_input_size: bool = False) -> keras.Model:
    """Build a functional model from grey ``(img_size, img_size, 1)`` images in 0..255.

    ``num_classes == 1`` gives one sigmoid unit (fracture probability); more gives a softmax
    (body-part classifier). ``weights`` is None, ``"imagenet"`` or a path: a whole-model
    ``.weights.h5`` file, or a backbone's notop ``.h5`` file. ``dropout_rate=None`` takes the
    architecture's default (``DEFAULT_DROPOUT_RATE``). The layers take the global dtype policy
    (see ``distribute.precision_policy`` for mixed precision) except the output layer, always float32.
    ``head`` is one of ``HEADS`` ("cells" for a single sigmoid unit only). ``any_input_size``
    (compact networks only, which are fully convolutional) builds the input as ``(None, None, 1)``:
    the model that trains on crops and validates on whole films (see ``crops``).
    """
    check_architecture(arch, img_size, weights)
    check_head(head, num_classes)
    if not _is_integer(num_classes) or num_classes < 1:
        raise ParameterError(f"num_classes={num_classes!r}: use 1 (sigmoid) or 2 and more (softmax)")
    if dropout_rate is None:
        dropout_rate = DEFAULT_DROPOUT_RATE[arch]
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float)) or not 0.0 <= dropout_rate < 1.0:
        raise ParameterError(f"dropout_rate={dropout_rate} must be in [0, 1)")
    weights, whole_model_weights = _split_weights(arch, weights)

    img_size, num_classes = int(img_size), int(num_classes)
    if any_input_size and arch not in COMPACT_ARCHITECTURES:
        raise ParameterError(f"{arch} takes one input size; training on crops needs {' or '.join(COMPACT_ARCHITECTURES)}")
    side = None if any_input_size else img_size
    images = keras.Input(shape=(side, side, 1), name="image")
    if arch in ("small_cnn", "small_cnn_patch4"):
        features = _small_cnn_features(images, seed, patch_stem=arch == "small_cnn_patch4")
    elif arch == "resnet_small":
        features = _resnet_small_features(images, seed)
    else:
        constructor, normalise = _backbone_builders()[arch]
        backbone_input = normalise(_grey_to_rgb(images))
        backbone_weights = _resolve_backbone_weights(arch, img_size, weights)
        try:
            # input_shape as well as input_tensor: Keras picks size-specific weight files (MobileNetV2) from it.
            backbone = constructor(include_top=False, weights=backbone_weights,
                                   input_tensor=backbone_input, input_shape=(img_size, img_size, 3))
        except Exception as error:  # noqa: BLE001 - download and file failures come in many types
            if backbone_weights == "imagenet":
                raise _imagenet_error(arch, img_size, error) from None
            raise _weights_file_error(backbone_weights, f"the notop ImageNet weights file of {arch}", error) from None
        features = backbone.output
        if backbone_weights is None:
            _from_scratch_batch_norm(backbone)
    head_initializer = keras.initializers.GlorotUniform(seed=seed + 100)
    if head == "cells":
        outputs = _cell_head(features, dropout_rate, seed, head_initializer)
        return _finish(keras.Model(images, outputs, name=arch), whole_model_weights, arch, img_size, num_classes)
    if arch in COMPACT_ARCHITECTURES:
        # A fracture is a small, local finding: max pooling keeps the strongest response instead of
        # averaging it away over the whole radiograph, which makes the compact net learn far faster.
        pooled = keras.layers.GlobalMaxPooling2D(name="pool")(features)
    else:
        pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    pooled = keras.layers.Dropout(dropout_rate, seed=seed, name="dropout")(pooled)
    # The output layer stays float32 under a mixed-precision policy, so probabilities and the loss are float32.
    if num_classes == 1:
        outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=head_initializer,
                                     dtype="float32", name="fracture_probability")(pooled)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=head_initializer,
                                     dtype="float32", name="body_part_probabilities")(pooled)
    return _finish(keras.Model(images, outputs, name=arch), whole_model_weights, arch, img_size, num_classes)


def _from_scratch_batch_norm(backbone: keras.Model) -> None:
    """Give a backbone trained from scratch the compact networks' batch-norm momentum.

    Keras' backbones keep moving statistics with momentum 0.99 (MobileNetV2: 0.999), made for
    long ImageNet runs. From random weights, on a few hundred steps, those statistics still hold
    mostly their initial values when the model is validated: MobileNetV2 trained 6 epochs on
    FracAtlas (528 steps) gave every validation film the same probability (AUROC 0.500).
    """
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = FROM_SCRATCH_BATCH_NORM_MOMENTUM


def check_head(head: str, num_classes: int = 1) -> None:
    """Raise ``ParameterError`` for an unknown head, or the cell head on a classifier of several classes."""
    if head not in HEADS:
        raise ParameterError(f"head={head!r} is unknown: choose {' or '.join(HEADS)}")
    if head == "cells" and num_classes != 1:
        raise ParameterError("head=cells scores fractures (one sigmoid unit): the body-part classifier uses head=pooled")


def _cell_head(features: Any, dropout_rate: float, seed: int, initializer: Any) -> Any:
    """One logit per cell of the last convolutional layer (``fracture_map``); the image's is the highest."""
    features = keras.layers.Dropout(dropout_rate, seed=seed, name="dropout")(features)
    cell_logits = keras.layers.Conv2D(1, 1, kernel_initializer=initializer, dtype="float32",
                                      name="fracture_map")(features)
    image_logit = keras.layers.GlobalMaxPooling2D(dtype="float32", name="cell_max")(cell_logits)
    return keras.layers.Activation("sigmoid", dtype="float32", name="fracture_probability")(image_logit)


def _finish(model: keras.Model, whole_model_weights: str | None, arch: str, img_size: int,
            num_classes: int) -> keras.Model:
    """Load a whole-model weights file into ``model`` when one was given; return the model."""
    if whole_model_weights is not None:
        try:
            model.load_weights(whole_model_weights)
        except Exception as error:  # noqa: BLE001 - mismatched or corrupt files fail in many ways
            raise _weights_file_error(whole_model_weights, f"weights saved from a {arch} model at {img_size} px "
                                      f"with {num_classes} output(s)", error) from None
    return model


def last_conv_layer_name(model: keras.Model) -> str:
    """Return the name of the last layer with a spatial (4-D) output before global pooling."""
    names = [layer.name for layer in model.layers]
    if "last_conv" in names:
        return "last_conv"
    # The head starts at the pooling (pooled head) or the dropout before the cell scores (cell head).
    stop = min([names.index(name) for name in ("pool", "dropout") if name in names], default=len(names))
    for layer in reversed(model.layers[:stop]):
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4 and not isinstance(layer, keras.layers.InputLayer):
            return layer.name
    raise ParameterError(f"model {model.name!r} has no convolutional layer for Grad-CAM")
