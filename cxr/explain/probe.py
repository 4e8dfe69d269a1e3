"""A sub-model that returns what every explanation method reads: the chosen layer's
activations, the head to score (logits when recoverable) and the probabilities.

Keras 3 only, no backend calls: the gradient code in ``gradients`` runs whatever this builds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from cxr.explain.scores import HeadKind

log = logging.getLogger(__name__)

_SQUASHING = ("softmax", "sigmoid")


@dataclass(frozen=True)
class Probe:
    """``model(x)`` → (activations of ``layer``, head, probabilities)."""

    model: Any
    layer: str
    head_kind: HeadKind
    #: compiled step functions, filled by ``gradients`` (one per score/output/gradient choice)
    compiled: dict[Any, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def classes(self) -> int:
        """Units of the model's output (1 for a sigmoid model, which has two classes)."""
        units = int(self.model.outputs[2].shape[-1])
        return 2 if units == 1 else units


def build_probe(model: Any, layer: str) -> Probe:
    """A probe on ``layer``; the head is the last layer recomputed without its softmax/sigmoid
    when that layer has an ``activation`` (Dense and friends), else the probabilities."""
    import keras

    try:
        target = model.get_layer(layer)
    except ValueError as exc:
        raise ValueError(f"model {model.name!r} has no layer {layer!r}") from exc
    if len(target.output.shape) != 4:
        raise ValueError(f"layer {layer!r} outputs shape {target.output.shape}; need (batch, h, w, c)")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probabilities = model.outputs[0]
    head, head_kind = _logits(model), "logits"
    if head is None:
        head, head_kind = probabilities, "probabilities"
    log.debug("probe on %s: head=%s", layer, head_kind)
    return Probe(keras.Model(inputs, [target.output, head, probabilities]), layer, head_kind)


def _logits(model: Any) -> Any | None:
    """The last layer applied again with a linear activation and the same weights, or None."""
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if activation not in _SQUASHING:
        return None
    config = last.get_config()
    config.update(activation="linear", name=f"{last.name}_logits")
    linear = last.__class__.from_config(config)
    logits = linear(last.input)
    linear.set_weights(last.get_weights())
    return logits
