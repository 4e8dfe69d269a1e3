"""A lung segmenter from the store, run the one way: its own input contract through THE
preprocessing, one compiled forward pass, the manifest's threshold.

It is a model like the others (versioned, sha256-checked on pull, loaded in Keras safe mode);
its manifest carries ``segmentation`` (threshold, held-out Dice) instead of operating points. A
classifier whose contract has a lung step pins it (``InputContract.lung_model``), and its
``ModelRuntime`` pulls and holds it, so the worker, explanations and evaluation crop with the
very segmenter training cropped with.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cxr.core.errors import ManifestError
from cxr.core.imaging import InputContract, preprocess
from cxr.core.imaging.contract import ModelPin
from modelstore.manifest import Manifest
from modelstore.store import ModelStore, PulledModel, ResolvedModel

log = logging.getLogger(__name__)


class LungSegmenter:
    """``lung_mask(pixels)``: a film (float32 gray in [0, 1], any size) → a boolean lung mask
    at the segmenter's input size. Thread-safe (the compiled graph is)."""

    def __init__(self, model: Any, *, contract: InputContract, threshold: float, ref: str,
                 pin: ModelPin | None = None) -> None:  # fmt: skip
        from modelstore.runtime import compile_forward

        self.model = model
        self.contract = contract
        self.threshold = threshold
        self.ref = ref
        self.pin = pin
        self.forward = compile_forward(model, contract.shape)

    @classmethod
    def from_pulled(cls, pulled: PulledModel) -> LungSegmenter:
        from modelstore.loading import load_keras_model

        manifest = pulled.manifest
        if manifest.segmentation is None:
            raise ManifestError(f"{manifest.ref} is not a segmenter (its manifest has no segmentation)")
        return cls(
            load_keras_model(pulled.path),
            contract=manifest.input,
            threshold=manifest.segmentation.threshold,
            ref=manifest.ref,
            pin=pin_of(manifest),
        )

    @classmethod
    def load(cls, store: ModelStore, ref: str | ResolvedModel | ModelPin) -> LungSegmenter:
        """Resolve (unless pinned), pull (sha256-checked) and load in safe mode."""
        if isinstance(ref, ModelPin):
            ref = ResolvedModel(ref.name, ref.version, ref.sha256)
        return cls.from_pulled(store.pull(ref))

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(N, h, w, 1) preprocessed inputs → (N, h, w) lung probabilities."""
        return np.asarray(self.forward(np.asarray(inputs, dtype=np.float32)))[..., 0]

    def lung_mask(self, pixels: np.ndarray) -> np.ndarray:
        return self.probabilities(preprocess(pixels, self.contract)[None])[0] >= self.threshold


def pin_of(manifest: Manifest) -> ModelPin:
    return ModelPin(name=manifest.name, version=manifest.version, sha256=manifest.sha256)
