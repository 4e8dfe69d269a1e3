"""Explanation methods: one small abstract base, one call for all, one hook per variant.

Every method answers ``method(score, inputs, layer=None)`` with an ``Explanation`` (as in
tf-keras-vis): ``score`` picks the class, ``inputs`` are preprocessed model inputs, ``layer``
overrides the default layer (the manifest's ``gradcam_layer``, else the last conv layer).
``GradCAM`` weighs channels by their mean gradient; ``GradCAMPlusPlus`` overrides only that
hook; ``FeatureMaps`` needs no gradients and keeps the most active channels instead.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cxr.explain.gradients import Forward, run_probe
from cxr.explain.maps import relu_normalize
from cxr.explain.probe import Probe, build_probe
from cxr.explain.scores import ClassScore, OutputKind

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
DEFAULT_FEATURE_CHANNELS = 36  # a 6×6 grid


@dataclass(frozen=True)
class Explanation:
    """What a method returns for N inputs."""

    method: str
    layer: str
    maps: np.ndarray  # (N, h, w) in [0, 1] at the layer's resolution
    probabilities: np.ndarray  # (N, units) as the model returned them
    targets: np.ndarray  # (N,) class index explained
    channels: np.ndarray | None = None  # (N, k, h, w) in [0, 1]: FeatureMaps only
    channel_indices: np.ndarray | None = None  # (N, k): FeatureMaps only


class ExplanationMethod(abc.ABC):
    """Runs the model through a probe in batches and turns each batch into maps (the hook)."""

    #: The name used on the command line, in artifact params and in storage keys.
    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: Any,
        *,
        output: OutputKind | None = None,
        default_layer: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.model = model
        self.output: OutputKind = output or ("sigmoid" if model.outputs[0].shape[-1] == 1 else "softmax")
        self.default_layer = default_layer
        self.batch_size = batch_size
        self._probes: dict[str, Probe] = {}

    def __call__(self, score: ClassScore, inputs: np.ndarray, layer: str | None = None) -> Explanation:
        inputs = np.asarray(inputs, dtype=np.float32)
        if inputs.ndim != 4:
            raise ValueError(f"{self.name} expects a batch (N, h, w, c), got shape {inputs.shape}")
        if len(inputs) == 0:
            raise ValueError(f"{self.name} was given an empty batch")
        probe = self._probe(layer)
        parts = []
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start : start + self.batch_size]
            forward = run_probe(probe, batch, score, self.output, with_gradients=self.needs_gradients)
            parts.append(self.explain(forward, probe.layer))
        return _concatenate(parts)

    @abc.abstractmethod
    def explain(self, forward: Forward, layer: str) -> Explanation:
        """Turn one batch's activations (and gradients) into an ``Explanation``."""

    def _probe(self, layer: str | None) -> Probe:
        from modelstore.loading import last_conv_layer

        name = layer or self.default_layer or last_conv_layer(self.model)
        if name is None:
            raise ValueError(f"model {self.model.name!r} has no 4-D layer to explain")
        if name not in self._probes:
            self._probes[name] = build_probe(self.model, name)
        return self._probes[name]


class GradCAM(ExplanationMethod):
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by their spatially averaged gradient."""

    name = "gradcam"

    def explain(self, forward: Forward, layer: str) -> Explanation:
        assert forward.gradients is not None
        weights = self.channel_weights(forward.activations, forward.gradients)  # (N, c)
        cams = np.einsum("nhwc,nc->nhw", forward.activations, weights)
        return Explanation(self.name, layer, relu_normalize(cams), forward.probabilities, forward.targets)

    def channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """(N, c) weight of each channel, per image: the variant's one hook."""
        return gradients.mean(axis=(1, 2))


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018) with the closed form for an exponential score.

    The paper's exp(score) factor is the same for every channel of one image, so it cancels in
    the alphas and only rescales the map, which normalisation undoes; it is left out.
    """

    name = "gradcam++"

    def channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        second, third = gradients**2, gradients**3
        total = activations.sum(axis=(1, 2), keepdims=True)
        denominator = 2.0 * second + total * third
        alphas = second / np.where(denominator != 0.0, denominator, 1.0)
        norm = alphas.sum(axis=(1, 2), keepdims=True)
        alphas = alphas / np.where(norm != 0.0, norm, 1.0)
        return (alphas * np.maximum(gradients, 0.0)).sum(axis=(1, 2))


class FeatureMaps(ExplanationMethod):
    """The ``count`` channels of a layer with the highest mean activation, per image.

    ``maps`` is the mean of those channels (an activation heatmap that regions and the shortcut
    score can read like a CAM); ``score`` only chooses the class reported in ``targets``.
    """

    name = "feature-maps"
    needs_gradients = False

    def __init__(self, model: Any, *, count: int = DEFAULT_FEATURE_CHANNELS, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.count = count

    def explain(self, forward: Forward, layer: str) -> Explanation:
        activations = np.moveaxis(forward.activations, -1, 1)  # (N, c, h, w)
        count = min(self.count, activations.shape[1])
        strength = activations.mean(axis=(2, 3))
        order = np.argsort(-strength, axis=1, kind="stable")[:, :count]
        chosen = np.take_along_axis(activations, order[:, :, None, None], axis=1)
        return Explanation(
            self.name, layer, relu_normalize(chosen.mean(axis=1)), forward.probabilities,
            forward.targets, relu_normalize(chosen), order,
        )  # fmt: skip


#: Which images of a scoring job are explained (``cxr score --explain``).
EXPLAIN_MODES = ("none", "positives", "all")

METHODS: dict[str, type[ExplanationMethod]] = {
    cls.name: cls for cls in (GradCAM, GradCAMPlusPlus, FeatureMaps)
}


def make_method(name: str, model: Any, **kwargs: Any) -> ExplanationMethod:
    """The method called ``name`` ('gradcam', 'gradcam++', 'feature-maps') on ``model``."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown explanation method {name!r}; choose from {sorted(METHODS)}") from None
    return cls(model, **kwargs)


def _concatenate(parts: list[Explanation]) -> Explanation:
    def stack(field: str) -> np.ndarray | None:
        values = [getattr(p, field) for p in parts]
        return None if values[0] is None else np.concatenate(values)

    first = parts[0]
    return Explanation(
        first.method, first.layer, stack("maps"), stack("probabilities"), stack("targets"),
        stack("channels"), stack("channel_indices"),
    )  # fmt: skip
