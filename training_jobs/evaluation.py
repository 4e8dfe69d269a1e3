"""Classification metrics on plain arrays: no Keras, no I/O, so they are cheap to test.

Inputs everywhere: ``y_true`` (N,) integer class indices and ``probs`` (N, K) class
probabilities in output order (a sigmoid model's single unit is widened to two columns by
``as_class_probabilities`` first). Figures that are undefined on the data (the AUC of a class with
no positives, the precision of a class never predicted) are ``None`` in the output, never a
made-up 0, so a report cannot look better or worse than the data allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Figures that get bootstrap confidence intervals (the ones a reader looks at first).
HEADLINE = ("accuracy", "macro_f1", "macro_auc", "covid_sensitivity", "covid_specificity", "covid_auc")
COVID = "covid"


def as_class_probabilities(outputs: np.ndarray, output: str) -> np.ndarray:
    """Model outputs → (N, K) probabilities. Sigmoid convention: one unit = P(classes[1])."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if output == "sigmoid":
        p1 = outputs.reshape(-1)
        return np.stack([1.0 - p1, p1], axis=1)
    return outputs.reshape(outputs.shape[0], -1)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes (scikit-learn's orientation)."""
    flat = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count half); None without both classes.

    Rank-based rather than through a ROC curve so that a thousand bootstrap resamples stay fast.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [values.size]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # 1-based average rank of the tie group
    return ranks


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE over equal-width confidence bins (0, 1/M], ..., ((M-1)/M, 1] of the top probability:
    sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|."""
    confidence, correct = _confidence_and_correct(y_true, probs)
    bins = _bin_index(confidence, n_bins)
    total = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def reliability_table(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Per non-empty bin: its range, count, mean confidence and accuracy (the reliability diagram)."""
    confidence, correct = _confidence_and_correct(y_true, probs)
    bins = _bin_index(confidence, n_bins)
    rows = []
    for b in range(n_bins):
        members = bins == b
        if members.any():
            rows.append(
                {
                    "low": b / n_bins,
                    "high": (b + 1) / n_bins,
                    "n": int(members.sum()),
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return rows


def _confidence_and_correct(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Right-closed bins: a confidence of exactly k/M belongs to bin k-1; 0 goes to the first bin.
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def per_class_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, dict]:
    """Precision, recall (= sensitivity), F1, specificity (one-vs-rest), AUC and N per class."""
    k = len(classes)
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, k)
    total = matrix.sum()
    out = {}
    for i, name in enumerate(classes):
        tp = matrix[i, i]
        fn = matrix[i].sum() - tp
        fp = matrix[:, i].sum() - tp
        tn = total - tp - fn - fp
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        # 2TP / (2TP + FP + FN): a class that is present but never predicted scores 0, as in
        # scikit-learn; only a class absent from both truth and predictions has no F1.
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        out[name] = {
            "n": int(matrix[i].sum()),
            "precision": precision,
            "recall": recall,
            "sensitivity": recall,
            "specificity": _ratio(tn, tn + fp),
            "f1": f1,
            "auc": binary_auc(np.asarray(y_true) == i, probs[:, i]),
        }
    return out


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def headline_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, present_only: bool = False
) -> dict[str, Any]:
    """Accuracy, macro F1 and AUC (over classes where defined), and the COVID figures.

    ``present_only``: macro F1 over the classes present in the truth only. On a set that lacks a
    class (a held-out hospital without pneumonia films), a few predictions of that class would
    otherwise add an F1 of 0 for a class nobody could have got right.
    """
    per_class = per_class_metrics(y_true, probs, classes)
    # Macro averages run over the classes where the figure is defined (scikit-learn's macro F1
    # likewise runs over the labels present in the truth or the predictions).
    f1s = [m["f1"] for m in per_class.values() if m["n"] > 0 or not present_only]
    values: dict[str, Any] = {
        "accuracy": float(np.mean(probs.argmax(axis=1) == np.asarray(y_true))),
        "macro_f1": _mean_defined(f1s),
        "macro_auc": _mean_defined([m["auc"] for m in per_class.values()]),
    }
    if COVID in per_class:
        covid = per_class[COVID]
        values |= {
            "covid_sensitivity": covid["sensitivity"],
            "covid_specificity": covid["specificity"],
            "covid_auc": covid["auc"],
        }
    return values


def bootstrap_intervals(
    y_true: np.ndarray,
    probs: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap CIs (images resampled with replacement, seeded) for each figure
    ``statistic`` returns. A resample where a figure is undefined is left out of that figure."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    samples: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        index = rng.integers(0, n, size=n)
        for key, value in statistic(y_true[index], probs[index]).items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                samples.setdefault(key, []).append(float(value))
    tail = (1.0 - level) / 2 * 100
    out: dict[str, list[float] | None] = {}
    for key in statistic(y_true, probs):
        values = samples.get(key)
        out[key] = (
            [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] if values else None
        )
    return out


def evaluate_predictions(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
    present_only: bool = False,
) -> dict[str, Any]:
    """Every figure of the evaluation report, as JSON-ready data (``present_only``: see
    ``headline_metrics``; then ``macro_f1_classes`` names the classes averaged)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(y_true), len(classes)):
        raise ValueError(f"probs must be (N={len(y_true)}, K={len(classes)}), got {probs.shape}")
    if len(y_true) == 0:
        raise ValueError("no predictions to evaluate")
    headline = headline_metrics(y_true, probs, classes, present_only=present_only)
    present = {"macro_f1_classes": [c for i, c in enumerate(classes) if (y_true == i).any()]}
    return {
        "classes": list(classes),
        "n": len(y_true),
        "n_per_class": {name: int((y_true == i).sum()) for i, name in enumerate(classes)},
        **headline,
        **(present if present_only else {}),
        "per_class": per_class_metrics(y_true, probs, classes),
        "confusion_matrix": confusion_matrix(y_true, probs.argmax(axis=1), len(classes)).tolist(),
        "ece": expected_calibration_error(y_true, probs, n_bins),
        "reliability": reliability_table(y_true, probs, n_bins),
        "ci95": bootstrap_intervals(
            y_true,
            probs,
            lambda t, p: headline_metrics(t, p, classes, present_only=present_only),
            n_resamples=n_resamples,
            seed=seed,
        ),
        "bootstrap": {"resamples": n_resamples, "seed": seed, "unit": "image"},
    }
