"""Which predicted labels count as findings.

"Positives" drives `--explain positives` and the report's gallery. Any class that is not one of
the known negative names is a finding, so a model with classes covid/normal/pneumonia has two
positive classes and a binary covid/non-covid model has one.
"""

from __future__ import annotations

NEGATIVE_CLASSES = frozenset({"normal", "non-covid", "no-finding", "negative"})


def is_positive(label: str) -> bool:
    return label.lower() not in NEGATIVE_CLASSES
