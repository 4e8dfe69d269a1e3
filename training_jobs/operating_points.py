"""Decision thresholds for a target sensitivity, chosen on the validation split.

A screening tool is run at an operating point, not at the argmax: "flag every film whose COVID
probability reaches t, where t keeps 95 % of the validation split's COVID films flagged". The
threshold is chosen on validation (never on test), stored in the manifest with the sensitivity
and specificity it gave there, and reported beside the argmax label wherever a label is shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from modelstore.manifest import OperatingPoint

#: Class → target sensitivity, when the configuration says nothing else.
DEFAULT_TARGETS: dict[str, float] = {"covid": 0.95}


def choose_operating_points(
    y_val: np.ndarray, probs_val: np.ndarray, classes: Sequence[str], targets: Mapping[str, float]
) -> dict[str, OperatingPoint]:
    """For each class named in ``targets`` (and present in ``classes`` with validation
    positives): the highest threshold whose validation sensitivity reaches the target."""
    y_val = np.asarray(y_val)
    points = {}
    for name, target in targets.items():
        if name not in classes:
            continue
        index = list(classes).index(name)
        positive = y_val == index
        scores = np.asarray(probs_val)[:, index]
        if not positive.any():
            continue
        ranked = np.sort(scores[positive])[::-1]
        threshold = float(ranked[max(0, math.ceil(target * positive.sum()) - 1)])
        called = scores >= threshold
        negatives = int((~positive).sum())
        points[name] = OperatingPoint(
            threshold=threshold,
            target_sensitivity=target,
            validation_sensitivity=float(called[positive].mean()),
            validation_specificity=float((~called[~positive]).mean()) if negatives else None,
            n_positive=int(positive.sum()),
            n_negative=negatives,
        )
    return points


def operating_point_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], points: Mapping[str, OperatingPoint]
) -> dict[str, float | None]:
    """``<class>_sensitivity_at_op`` and ``<class>_specificity_at_op`` at each stored threshold
    (None where the data has no positives or no negatives)."""
    y_true = np.asarray(y_true)
    out: dict[str, float | None] = {}
    for name, point in points.items():
        index = list(classes).index(name)
        positive = y_true == index
        called = np.asarray(probs)[:, index] >= point.threshold
        out[f"{name}_sensitivity_at_op"] = float(called[positive].mean()) if positive.any() else None
        out[f"{name}_specificity_at_op"] = float((~called[~positive]).mean()) if (~positive).any() else None
    return out


def operating_point_figures(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    points: Mapping[str, OperatingPoint],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, object]:
    """The figures at the stored thresholds with percentile-bootstrap CIs, and the thresholds."""
    from training_jobs.evaluation import bootstrap_intervals

    statistic = lambda t, p: operating_point_metrics(t, p, classes, points)  # noqa: E731
    return {
        **operating_point_metrics(y_true, probs, classes, points),
        "thresholds": {name: point.threshold for name, point in points.items()},
        "ci95": bootstrap_intervals(
            np.asarray(y_true), np.asarray(probs), statistic, n_resamples=n_resamples, seed=seed
        ),
    }
