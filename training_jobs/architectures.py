"""The architecture zoo, selected by name.

Each builder returns a ``BuiltModel``: the Keras model, the input normalization its weights
expect (which goes into the manifest's ``InputContract``), the layer Grad-CAM should read, and
the layers of the pretrained base (for freezing and fine-tuning).

An **ensemble** is named by joining application names with ``+`` (``mobilenetv2+resnet50+vgg16``):
one model whose input is the gray image in [0, 1] replicated to three channels; each member maps
it to its own value range with a Keras ``Normalization`` layer (the same affine map as
``preprocess.normalize``), runs its base and its own head, and the output is the mean of the
members' probabilities. Grad-CAM reads the first member's last convolution.

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


@dataclass(frozen=True)
class Head:
    """A linear head on pooled features: where its features come from and its Dense layer."""

    features_layer: str
    dense_layer: str


@dataclass
class BuiltModel:
    model: Any  # keras.Model
    normalization: Normalization
    gradcam_layer: str
    channels: int
    output: str  # "sigmoid" | "softmax"
    base_layers: list[Any] = field(default_factory=list)  # pretrained base; empty for scratch models
    #: Linear heads on pooled base features (one per ensemble member); empty for scratch models.
    heads: list[Head] = field(default_factory=list)

    @property
    def pretrained(self) -> bool:
        return bool(self.base_layers)

    @property
    def is_ensemble(self) -> bool:
        return len(self.heads) > 1


@dataclass(frozen=True)
class _Application:
    constructor: str  # attribute of keras.applications
    normalization: Normalization
    gradcam_layer: str
    weights_file: str  # Keras' official name of the no-top ImageNet weights (224 px where it matters)


# Normalizations follow each application's own preprocess_input (caffe for VGG/ResNet, torch
# for DenseNet, [-1, 1] for MobileNetV2; EfficientNet rescales inside the model).
_KERAS_NOTOP = "_weights_tf_dim_ordering_tf_kernels_notop.h5"
_APPLICATIONS: dict[str, _Application] = {
    "vgg16": _Application("VGG16", "caffe", "block5_conv3", f"vgg16{_KERAS_NOTOP}"),
    "vgg19": _Application("VGG19", "caffe", "block5_conv4", f"vgg19{_KERAS_NOTOP}"),
    "resnet50": _Application("ResNet50", "caffe", "conv5_block3_out", f"resnet50{_KERAS_NOTOP}"),
    "densenet121": _Application("DenseNet121", "torch", "relu", f"densenet121{_KERAS_NOTOP}"),
    "mobilenetv2": _Application(
        "MobileNetV2",
        "symmetric",
        "out_relu",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
    "efficientnetb0": _Application("EfficientNetB0", "raw255", "top_activation", "efficientnetb0_notop.h5"),
}
ENSEMBLE_SEPARATOR = "+"
_MEMBER_NORMALIZATION = "_input_normalization"  # suffix of an ensemble member's input layer
SCRATCH = ("simple_cnn", "alexnet")
ARCHITECTURES = (*SCRATCH, *_APPLICATIONS)


def _head(x: Any, num_classes: int, dropout: float, prefix: str = "") -> tuple[Any, str]:
    import keras

    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{prefix}head_dropout")(x)
    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    dense = keras.layers.Dense(units, activation=activation, dtype="float32", name=f"{prefix}predictions")
    outputs = dense(x)
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


def is_ensemble(name: str) -> bool:
    return ENSEMBLE_SEPARATOR in name


def ensemble_members(name: str) -> tuple[str, ...]:
    """``a+b+c`` → (a, b, c), each an application architecture, none twice."""
    members = tuple(part.strip() for part in name.split(ENSEMBLE_SEPARATOR))
    unknown = [m for m in members if m not in _APPLICATIONS]
    if unknown or len(members) < 2 or len(set(members)) != len(members):
        raise ConfigurationError(
            f"an ensemble joins two or more distinct pretrained architectures with '+' "
            f"({', '.join(_APPLICATIONS)}), got {name!r}"
        )
    return members


def resolve_weights(weights: str, arch: str) -> str | None:
    """'none' → None (random init), 'imagenet' → Keras' download, a file → that file, a directory
    → the file with Keras' official no-top name for ``arch`` in it (how an ensemble finds the
    weights of each member offline)."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if path.is_dir():
        candidate = path / _APPLICATIONS[arch].weights_file
        if not candidate.is_file():
            raise ConfigurationError(
                f"no {arch} weights in {weights}: expected {candidate.name} (Keras' official name)"
            )
        return str(candidate)
    if not path.is_file():
        raise ConfigurationError(
            f"weights {weights} does not exist (use none, imagenet, a weights file or a folder of them)"
        )
    return str(path)


def _base(name: str, inputs: Any, image_size: int, weights: str) -> tuple[Any, str | None]:
    import keras

    constructor: Callable[..., Any] = getattr(keras.applications, _APPLICATIONS[name].constructor)
    source = resolve_weights(weights, name)
    try:
        return constructor(include_top=False, weights=source, input_tensor=inputs), source
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot build {name} at {image_size} px with weights {weights}: {exc}"
        ) from exc


def _branch(
    name: str, tensor: Any, image_size: int, num_classes: int, weights: str, prefix: str = ""
) -> tuple[Any, str, Head, list[Any]]:
    """Pretrained base ``name`` on ``tensor`` with global pooling and a new head: (output,
    activation, the head, the base's own layers when pretrained, for freezing)."""
    import keras

    base, source = _base(name, tensor, image_size, weights)
    pooled = keras.layers.GlobalAveragePooling2D(name=f"{prefix}avg_pool_head")(base.output)
    output, activation = _head(pooled, num_classes, 0.3, prefix=prefix)
    own_layers = [  # without the model's input and an ensemble member's input normalization
        layer
        for layer in base.layers
        if not isinstance(layer, keras.layers.InputLayer) and not layer.name.endswith(_MEMBER_NORMALIZATION)
    ]
    return (
        output,
        activation,
        Head(f"{prefix}avg_pool_head", f"{prefix}predictions"),
        own_layers if source else [],
    )


def _application(name: str, image_size: int, num_classes: int, weights: str) -> BuiltModel:
    import keras

    spec = _APPLICATIONS[name]
    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs, activation, head, base_layers = _branch(name, inputs, image_size, num_classes, weights)
    model = keras.Model(inputs, outputs, name=name)
    return BuiltModel(model, spec.normalization, spec.gradcam_layer, 3, activation, base_layers, [head])


def member_normalization(name: str, inputs: Any) -> Any:
    """[0, 1] three-channel input → the range member ``name`` expects, as an in-model layer."""
    import keras

    from cxr.core.imaging import InputContract
    from cxr.core.imaging.preprocess import normalization_affine

    contract = InputContract(height=1, width=1, channels=3, normalization=_APPLICATIONS[name].normalization)
    mean, std = normalization_affine(contract)
    layer = keras.layers.Normalization(
        mean=mean.tolist(), variance=(std**2).tolist(), name=f"{name}{_MEMBER_NORMALIZATION}"
    )
    return layer(inputs)


def _ensemble(name: str, image_size: int, num_classes: int, weights: str) -> BuiltModel:
    """Members side by side on one input, probabilities averaged (see the module docstring)."""
    import keras

    members = ensemble_members(name)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs, base_layers, heads, activation = [], [], [], "softmax"
    for member in members:
        normalized = member_normalization(member, inputs)
        output, activation, head, own_layers = _branch(
            member, normalized, image_size, num_classes, weights, prefix=f"{member}_"
        )
        outputs.append(output)
        heads.append(head)
        base_layers += own_layers
    averaged = keras.layers.Average(dtype="float32", name="predictions")(outputs)
    try:
        model = keras.Model(inputs, averaged, name=name.replace(ENSEMBLE_SEPARATOR, "_"))
    except ValueError as exc:  # Keras names layers per application; some share names
        raise ConfigurationError(
            f"ensemble {name} cannot be built: its members share layer names ({exc}); "
            "combine architectures from different families (e.g. mobilenetv2+resnet50+vgg16)"
        ) from exc
    gradcam = _APPLICATIONS[members[0]].gradcam_layer
    return BuiltModel(model, "unit", gradcam, 3, activation, base_layers, heads)


def build_model(name: str, *, image_size: int, num_classes: int, weights: str = "none") -> BuiltModel:
    """The named architecture (or ``a+b`` ensemble) for square ``image_size`` inputs and
    ``num_classes`` outputs."""
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
    elif is_ensemble(name):
        built = _ensemble(name, image_size, num_classes, weights)
    else:
        raise ConfigurationError(
            f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)} "
            f"or join pretrained ones with '+'"
        )
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
