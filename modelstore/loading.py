"""Loading Keras models safely. The only module of the model store that imports Keras."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from cxr.core.errors import ModelStoreError, UnsafeModelError

_UNSAFE_HINTS = ("safe_mode", "lambda", "arbitrary code")


def load_keras_model(path: Path) -> Any:
    """Load a ``.keras`` (or legacy ``.h5``) file in Keras safe mode, uncompiled.

    Safe mode refuses deserialising Python bytecode (``Lambda`` layers), which would otherwise
    run arbitrary code from the file on our workers.
    """
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError/TypeError with varying messages
        text = str(exc)
        if any(hint in text.lower() for hint in _UNSAFE_HINTS):
            raise UnsafeModelError(
                f"{path.name} was refused by Keras safe mode (it holds code, e.g. a Lambda "
                "layer); rebuild the model without it"
            ) from exc
        raise ModelStoreError(f"cannot load model {path.name}: {type(exc).__name__}: {text[:300]}") from exc


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model file depends on, for the manifest."""
    versions: dict[str, str] = {}
    for dist in ("cxr", "keras", "tensorflow-cpu", "tensorflow", "numpy", "torch", "jax"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import keras

        versions["keras_backend"] = keras.backend.backend()
    except ImportError:  # pragma: no cover - keras is a dependency
        pass
    return versions


def last_conv_layer(model: Any) -> str | None:
    """Name of the last layer with a 4-D (batch, h, w, c) output: Grad-CAM's usual target."""
    for layer in reversed(model.layers):
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is not None and len(shape) == 4 and "conv" in type(layer).__name__.lower():
            return str(layer.name)
    for layer in reversed(model.layers):
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is not None and len(shape) == 4 and layer.name != model.layers[0].name:
            return str(layer.name)
    return None


def pooled_feature_layers(model: Any) -> list[str]:
    """The layers that pool a 4-D feature map into one vector per image (global pooling,
    flatten): the features a head reads. An ensemble has one per member, in model order."""
    names = []
    for layer in model.layers:
        inputs, outputs = getattr(layer, "input", None), getattr(layer, "output", None)
        if isinstance(inputs, list | tuple) or inputs is None or outputs is None:
            continue
        if len(inputs.shape) == 4 and len(outputs.shape) == 2:
            names.append(str(layer.name))
    return names
