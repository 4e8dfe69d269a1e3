"""Which class each image is explained for, and the scalar per image whose gradient is taken.

The score is read from the model's logits when the probe could recover them (see ``probe``):
a saturated softmax or sigmoid has near-zero gradients, which would blank confident calls.
For a single-unit sigmoid model the unit is ``classes[1]``; ``classes[0]`` is explained with the
logit's negative (or ``1 - p`` when only probabilities are available).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

OutputKind = Literal["softmax", "sigmoid"]
HeadKind = Literal["logits", "probabilities"]


@dataclass(frozen=True)
class ClassScore:
    """Explain ``class_index`` for every image, or each image's predicted class when None."""

    class_index: int | None = None

    def targets(self, probabilities: np.ndarray, output: OutputKind) -> np.ndarray:
        """The class index explained for each image, shape (N,)."""
        count = len(probabilities)
        if self.class_index is not None:
            classes = 2 if output == "sigmoid" else probabilities.shape[-1]
            if not 0 <= self.class_index < classes:
                raise ValueError(f"class index {self.class_index} is outside 0..{classes - 1}")
            return np.full(count, self.class_index, dtype=np.int64)
        return predicted_classes(probabilities, output)

    def __call__(self, head: Any, targets: np.ndarray, output: OutputKind, head_kind: HeadKind) -> Any:
        """The per-image score tensor (N,) picked from the model head with backend-neutral ops."""
        from keras import ops

        if output == "softmax":
            picked = ops.take_along_axis(head, ops.convert_to_tensor(targets[:, None]), axis=1)
            return picked[:, 0]
        unit = head[:, 0]
        positive = ops.convert_to_tensor(targets == 1)
        if head_kind == "logits":
            return ops.where(positive, unit, -unit)
        return ops.where(positive, unit, 1.0 - unit)


def predicted_classes(probabilities: np.ndarray, output: OutputKind) -> np.ndarray:
    """Argmax for softmax; ``p >= 0.5`` → classes[1] for a single sigmoid unit."""
    if output == "sigmoid":
        return (probabilities[:, 0] >= 0.5).astype(np.int64)
    return np.argmax(probabilities, axis=-1).astype(np.int64)


def class_probabilities(probabilities: np.ndarray, output: OutputKind) -> np.ndarray:
    """(N, classes) probabilities; a sigmoid unit p becomes [1 - p, p]."""
    if output == "sigmoid":
        return np.concatenate([1.0 - probabilities[:, :1], probabilities[:, :1]], axis=1)
    return probabilities
