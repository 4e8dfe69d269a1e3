"""Register a model trained elsewhere (a seed project's .keras or .h5) in the model store."""

from __future__ import annotations

import tempfile
from pathlib import Path

from cxr.core.errors import ManifestError
from cxr.core.imaging.contract import Contrast, InputContract, Normalization
from modelstore.loading import last_conv_layer, library_versions, load_keras_model
from modelstore.manifest import Manifest
from modelstore.store import ModelStore


def import_model(
    store: ModelStore,
    path: Path,
    *,
    name: str,
    classes: list[str],
    image_size: int,
    normalization: Normalization = "unit",
    contrast: Contrast = "none",
    architecture: str = "imported",
    description: str = "",
    aliases: tuple[str, ...] = (),
) -> Manifest:
    """Load in safe mode, check its shapes against what the caller states, re-save as .keras
    and publish. A file that safe mode refuses (Lambda layers) is never registered."""
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise ManifestError(f"import expects a .keras or .h5 file, got {path.name}")
    model = load_keras_model(path)
    input_shape = tuple(model.inputs[0].shape)
    if len(input_shape) != 4:
        raise ManifestError(f"{path.name}: expected an image input (batch, h, w, c), got {input_shape}")
    _, height, width, channels = input_shape
    if channels not in (1, 3):
        raise ManifestError(f"{path.name}: input has {channels} channels; expected 1 or 3")
    for stated, actual in ((image_size, height), (image_size, width)):
        if actual is not None and actual != stated:
            raise ManifestError(f"{path.name}: input is {height}×{width}, but --image-size is {stated}")
    units = int(model.outputs[0].shape[-1])
    if units == len(classes):
        output = "softmax" if units > 1 else "sigmoid"
    elif units == 1 and len(classes) == 2:
        output = "sigmoid"
    else:
        raise ManifestError(f"{path.name}: the model has {units} output units for {len(classes)} classes")
    contract = InputContract(
        height=image_size, width=image_size, channels=channels, normalization=normalization, contrast=contrast
    )
    with tempfile.TemporaryDirectory() as tmp:
        keras_file = Path(tmp) / "model.keras"
        model.save(keras_file)
        return store.publish(
            name,
            keras_file,
            architecture=architecture,
            classes=classes,
            input_contract=contract,
            output=output,
            gradcam_layer=last_conv_layer(model),
            library_versions=library_versions(),
            description=description or f"imported from {path.name}",
            aliases=aliases,
        )
