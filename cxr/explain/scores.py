"""Which class each image is explained for, and the scalar per image whose gradient is taken.

The score is read from the model's logits when the probe could recover them (see ``probe``):
a saturated softmax or sigmoid has near-zero gradients, which would blank confident calls.
For a single-unit sigmoid model the unit is ``classes[1]``; ``classes[0]`` is explained with the
logit's negative (or ``1 - p`` when only probabilities are available).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from modelstore.outputs import OutputKind, class_probabilities, label_indices

HeadKind = Literal["logits", "probabilities"]


@dataclass(frozen=True)
class ClassScore:
    """Explain ``class_index`` for every image, or each image's predicted class when None."""

    class_index: int | None = None

    def check(self, classes: int) -> None:
        """Refuse a class index the model does not have, before any tensor is built."""
        if self.class_index is not None and not 0 <= self.class_index < classes:
            raise ValueError(f"class index {self.class_index} is outside 0..{classes - 1}")

    def targets(self, probabilities: Any, output: OutputKind) -> Any:
        """The class index explained for each image, an int32 tensor (N,), in backend ops so
        that the whole scoring step can be compiled: the fixed class, or each image's label by
        the model store's one rule (``modelstore.outputs``)."""
        from keras import ops

        if self.class_index is not None:
            return ops.zeros_like(probabilities[:, 0], dtype="int32") + self.class_index
        return ops.cast(label_indices(class_probabilities(probabilities, output, ops), ops), "int32")

    def __call__(self, head: Any, targets: Any, output: OutputKind, head_kind: HeadKind) -> Any:
        """The per-image score tensor (N,) picked from the model head with backend-neutral ops."""
        from keras import ops

        if output == "softmax":
            return ops.take_along_axis(head, ops.expand_dims(targets, 1), axis=1)[:, 0]
        unit = head[:, 0]
        positive = ops.equal(targets, 1)
        if head_kind == "logits":
            return ops.where(positive, unit, -unit)
        return ops.where(positive, unit, 1.0 - unit)
