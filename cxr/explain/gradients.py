"""Activations and per-sample gradients: the ONE backend-specific module (TensorFlow here).

Gradients are taken of the *sum* of the per-image scores. In inference mode images do not
interact, so d(sum_i s_i)/dA_j = ds_j/dA_j: each image keeps its own gradients. (A popular
Grad-CAM example averages the gradients over the batch axis instead, which is only right for a
batch of one.) The step is compiled with ``tf.function`` once per probe, score and output kind:
an eager backward pass through a deep network costs more in Python than in arithmetic. Another
backend (JAX's ``grad``, PyTorch's ``autograd``) would be added here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.explain.probe import Probe
from cxr.explain.scores import ClassScore, OutputKind


@dataclass(frozen=True)
class Forward:
    """One batch through a probe: float32 arrays, batch first."""

    activations: np.ndarray  # (N, h, w, c)
    gradients: np.ndarray | None  # (N, h, w, c); None when not asked for
    probabilities: np.ndarray  # (N, units)
    targets: np.ndarray  # (N,) class index explained for each image


def run_probe(
    probe: Probe, inputs: np.ndarray, score: ClassScore, output: OutputKind, *, with_gradients: bool
) -> Forward:
    """Run one batch; gradients of each image's score w.r.t. its own activations if asked."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"explanations need the tensorflow backend, not {keras.backend.backend()!r}")
    score.check(probe.classes)
    key = (score, output, with_gradients)
    if key not in probe.compiled:
        probe.compiled[key] = _compile(probe, score, output, with_gradients)
    activations, gradients, probabilities, targets = probe.compiled[key](np.asarray(inputs, dtype=np.float32))
    return Forward(
        np.asarray(activations),
        None if gradients is None else np.asarray(gradients),
        np.asarray(probabilities, dtype=np.float32),
        np.asarray(targets, dtype=np.int64),
    )


def _compile(probe: Probe, score: ClassScore, output: OutputKind, with_gradients: bool) -> Callable[..., Any]:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def step(batch: Any) -> tuple[Any, Any, Any, Any]:
        if not with_gradients:
            activations, _, probabilities = probe.model(batch, training=False)
            return activations, None, probabilities, score.targets(probabilities, output)
        with tf.GradientTape() as tape:
            activations, head, probabilities = probe.model(batch, training=False)
            targets = score.targets(tf.stop_gradient(probabilities), output)
            total = tf.reduce_sum(score(head, targets, output, probe.head_kind))
        gradients = tape.gradient(total, activations)
        if gradients is None:  # the score does not depend on the layer: a zero gradient
            gradients = tf.zeros_like(activations)
        return activations, gradients, probabilities, targets

    return step
