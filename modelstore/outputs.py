"""A model's raw output → class probabilities → labels: the one conversion and the one tie rule.

Written once over an array namespace (NumPy by default, ``keras.ops`` inside a compiled
explanation step), so the stored prediction, the metrics of an evaluation and the class an
explanation is drawn for can never disagree about which class an output means.

- ``softmax`` models output one probability per class, in manifest order.
- ``sigmoid`` models output one unit p = P(classes[1]); P(classes[0]) = 1 - p.
- The label is the class of highest probability; a tie goes to the class listed first (so a
  sigmoid output of exactly 0.5 is ``classes[0]``). This is ``argmax``'s own rule in NumPy and in
  every Keras backend.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal

import numpy as np

from cxr.core.errors import ManifestError

OutputKind = Literal["softmax", "sigmoid"]


def class_probabilities(raw: Any, output: OutputKind, ops: ModuleType | Any = np) -> Any:
    """(N, units) model outputs → (N, classes) probabilities in manifest class order."""
    if output == "sigmoid":
        positive = raw[:, 0]
        return ops.stack([1.0 - positive, positive], axis=1)
    return raw


def label_indices(probabilities: Any, ops: ModuleType | Any = np) -> Any:
    """Each row's class index: highest probability, ties to the class listed first."""
    return ops.argmax(probabilities, axis=-1)


def check_output_shape(raw: np.ndarray, output: OutputKind, n_classes: int, where: str) -> None:
    """Refuse an output that cannot mean what the manifest says (a wrong class count or kind)."""
    units = 1 if output == "sigmoid" else n_classes
    if raw.ndim != 2 or raw.shape[1] != units:
        raise ManifestError(
            f"{where}: a {output} model with {n_classes} classes must output (N, {units}), got {raw.shape}"
        )
