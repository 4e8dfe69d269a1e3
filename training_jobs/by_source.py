"""Figures broken down by source (hospital, collection) on plain arrays.

On public COVID sets one source supplies most of one class (cxr-dev: covid 85 % ieee8023, normal
89 % NIH), so a pooled test-split figure can be earned by telling sources apart. Per source, that
shortcut shows: a source that holds one class only has no COVID AUC (``None``), and its
specificity or sensitivity says how the model does on that source's films alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from training_jobs.evaluation import HEADLINE, evaluate_predictions

#: Where the listing names no source (folder layout, rows without a prefixed patient id).
UNKNOWN_SOURCE = "(unknown)"


def per_source_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    sources: Sequence[str | None],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Source → N, N per class, the headline figures and their bootstrap CIs, on that source's
    images alone. Macro F1 runs over the classes present in that source (``present_only``): a
    source without pneumonia films should not be charged an F1 of 0 for pneumonia."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(sources) != len(y_true):
        raise ValueError(f"{len(sources)} sources for {len(y_true)} images")
    names = np.asarray([UNKNOWN_SOURCE if s is None else s for s in sources], dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names.tolist())):
        index = np.flatnonzero(names == name)
        metrics = evaluate_predictions(
            y_true[index], probs[index], classes, n_resamples=n_resamples, seed=seed, present_only=True
        )
        keep = ("n", "n_per_class", *HEADLINE, "macro_f1_classes", "ci95")
        out[name] = {key: metrics[key] for key in keep if key in metrics}
    return out


def source_lines(breakdown: dict[str, dict[str, Any]]) -> list[str]:
    """One readable line per source: N, then each headline figure with its CI where defined."""
    lines = []
    for name, metrics in breakdown.items():
        parts = []
        for key in ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity", "covid_auc"):
            if key not in metrics:
                continue
            value, ci = metrics[key], metrics["ci95"].get(key)
            text = "n/a" if value is None else f"{value:.3f}"
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and value is not None else ""
            parts.append(f"{key} {text}{interval}")
        lines.append(f"{name} (n={metrics['n']}): " + ", ".join(parts))
    return lines
