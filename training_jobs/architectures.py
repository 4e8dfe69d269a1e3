"""The architecture zoo, selected by name.

Each builder returns a ``BuiltModel``: the Keras model, the input normalization its weights
expect (which goes into the manifest's ``InputContract``), the layer Grad-CAM should read, and
the layers of the pretrained base (for freezing and fine-tuning).

Rules that keep models portable: Keras 3 layers only (no ``tf.*``, no ``Lambda``, so files load
in safe mode on any backend); application bases are built on the model's own input tensor, so
every layer (and the Grad-CAM layer) sits at the top level of the model, not inside a nested
sub-model; two classes get one sigmoid unit (= P(classes[1])), more get a softmax; the output
layer is float32 even under mixed precision, so probabilities are not rounded to float16.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.core.errors import ConfigurationError
from cxr.core.imaging import Normalization

log = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    model: Any  # keras.Model
    normalization: Normalization
    gradcam_layer: str
    channels: int
    output: str  # "sigmoid" | "softmax"
    base_layers: list[Any] = field(default_factory=list)  # pretrained base; empty for scratch models

    @property
    def pretrained(self) -> bool:
        return bool(self.base_layers)


@dataclass(frozen=True)
class _Application:
    constructor: str  # attribute of keras.applications
    normalization: Normalization
    gradcam_layer: str


# Normalizations follow each application's own preprocess_input (caffe for VGG/ResNet, torch
# for DenseNet, [-1, 1] for MobileNetV2; EfficientNet rescales inside the model).
_APPLICATIONS: dict[str, _Application] = {
    "vgg16": _Application("VGG16", "caffe", "block5_conv3"),
    "vgg19": _Application("VGG19", "caffe", "block5_conv4"),
    "resnet50": _Application("ResNet50", "caffe", "conv5_block3_out"),
    "densenet121": _Application("DenseNet121", "torch", "relu"),
    "mobilenetv2": _Application("MobileNetV2", "symmetric", "out_relu"),
    "efficientnetb0": _Application("EfficientNetB0", "raw255", "top_activation"),
}
SCRATCH = ("simple_cnn", "alexnet")
ARCHITECTURES = (*SCRATCH, *_APPLICATIONS)


def _head(x: Any, num_classes: int, dropout: float) -> tuple[Any, str]:
    import keras

    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    outputs = keras.layers.Dense(units, activation=activation, dtype="float32", name="predictions")(x)
    return outputs, activation


def _simple_cnn(image_size: int, num_classes: int) -> BuiltModel:
    """Three conv blocks and two dense layers, from scratch, on one gray channel.

    Flatten (not global pooling) before the dense layers, as in the seed projects: it keeps
    *where* a feature is, which a chest X-ray classifier may legitimately need.
    """
    import keras

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = inputs
    for i, filters in enumerate((32, 64, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="dense1")(x)
    outputs, activation = _head(x, num_classes, 0.5)
    model = keras.Model(inputs, outputs, name="simple_cnn")
    return BuiltModel(model, "unit", "conv3", 1, activation)


def _alexnet(image_size: int, num_classes: int) -> BuiltModel:
    """AlexNet's layout (5 conv, 3 max-pool, 2 dense) with batch normalization instead of local
    response normalization, 'same' padding so small inputs still work, and 1024-wide dense layers
    instead of 4096 (the 4096 version is ~50 M parameters at 224 px for a 3-class problem)."""
    import keras

    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Conv2D(96, 11, strides=4, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = layers.Conv2D(256, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, activation="relu", name="fc6")(x)
    x = layers.Dropout(0.5, name="drop6")(x)
    x = layers.Dense(1024, activation="relu", name="fc7")(x)
    outputs, activation = _head(x, num_classes, 0.5)
    model = keras.Model(inputs, outputs, name="alexnet")
    return BuiltModel(model, "unit", "conv5", 1, activation)


def resolve_weights(weights: str) -> str | None:
    """'none' → None (random init), 'imagenet' → Keras' download, anything else → a local file."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"weights file {weights} does not exist (use none, imagenet or a path)")
    return str(path)


def _application(name: str, image_size: int, num_classes: int, weights: str) -> BuiltModel:
    import keras

    spec = _APPLICATIONS[name]
    inputs = keras.Input((image_size, image_size, 3), name="image")
    constructor: Callable[..., Any] = getattr(keras.applications, spec.constructor)
    source = resolve_weights(weights)
    try:
        base = constructor(include_top=False, weights=source, input_tensor=inputs)
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot build {name} at {image_size} px with weights {weights}: {exc}"
        ) from exc
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool_head")(base.output)
    outputs, activation = _head(x, num_classes, 0.3)
    model = keras.Model(inputs, outputs, name=name)
    base_layers = [layer for layer in base.layers if layer is not base.layers[0]] if source else []
    return BuiltModel(model, spec.normalization, spec.gradcam_layer, 3, activation, base_layers)


def build_model(name: str, *, image_size: int, num_classes: int, weights: str = "none") -> BuiltModel:
    """The named architecture for square ``image_size`` inputs and ``num_classes`` outputs."""
    if num_classes < 2:
        raise ConfigurationError(f"need at least two classes, got {num_classes}")
    if name in SCRATCH and weights != "none":
        raise ConfigurationError(f"{name} trains from scratch; --weights must be none")
    if name == "simple_cnn":
        built = _simple_cnn(image_size, num_classes)
    elif name == "alexnet":
        built = _alexnet(image_size, num_classes)
    elif name in _APPLICATIONS:
        built = _application(name, image_size, num_classes, weights)
    else:
        raise ConfigurationError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    log.info("built %s: %d parameters, input %s", name, built.model.count_params(), built.model.input_shape)
    return built


def freeze_base(built: BuiltModel) -> None:
    """Train only the new head on top of pretrained features."""
    for layer in built.base_layers:
        layer.trainable = False


def unfreeze_top(built: BuiltModel, n_layers: int) -> int:
    """Make the top ``n_layers`` layers of the base trainable; returns how many now are.

    Batch-normalization layers stay frozen: with a small batch their statistics would be
    re-estimated from a handful of X-rays and wreck the pretrained features.
    """
    import keras

    count = 0
    for layer in built.base_layers[-n_layers:] if n_layers > 0 else []:
        if isinstance(layer, keras.layers.BatchNormalization):
            continue
        layer.trainable = True
        count += int(bool(layer.weights))
    return count
