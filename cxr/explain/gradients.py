"""Activations and per-sample gradients: the ONE backend-specific module (TensorFlow here).

Gradients are taken of the *sum* of the per-image scores. In inference mode images do not
interact, so d(sum_i s_i)/dA_j = ds_j/dA_j: each image keeps its own gradients. (A popular
Grad-CAM example averages the gradients over the batch axis instead, which is only right for a
batch of one.) Another backend (JAX's ``grad``, PyTorch's ``autograd``) would be added here.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    import tensorflow as tf

    batch = tf.convert_to_tensor(np.asarray(inputs, dtype=np.float32))
    if not with_gradients:
        activations, _, probabilities = probe.model(batch, training=False)
        probs = np.asarray(probabilities, dtype=np.float32)
        return Forward(np.asarray(activations), None, probs, score.targets(probs, output))
    with tf.GradientTape() as tape:
        activations, head, probabilities = probe.model(batch, training=False)
        probs = np.asarray(probabilities, dtype=np.float32)
        targets = score.targets(probs, output)
        total = tf.reduce_sum(score(head, targets, output, probe.head_kind))
    gradients = tape.gradient(total, activations)
    acts = np.asarray(activations)
    # None when the score does not depend on the layer at all: that is a zero gradient
    grads = np.zeros_like(acts) if gradients is None else np.asarray(gradients)
    return Forward(acts, grads, probs, targets)
