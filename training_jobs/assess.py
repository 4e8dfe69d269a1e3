"""Measure a model on labelled images, write the report, record it: shared by ``cxr train``
(on the test split) and ``cxr evaluate`` (on any dataset), so both report the same way."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.core.settings import Settings
from cxr.core.storage import open_store
from modelstore.runtime import ModelRuntime
from training_jobs.evaluation import evaluate_predictions
from training_jobs.operating_points import operating_point_figures
from training_jobs.report import write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assessment:
    metrics: dict[str, Any]
    report_uri: str
    probs: np.ndarray
    shift_percentiles: np.ndarray | None = None  # per image, when the model has a reference


def manifest_values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures that go into a model manifest: everything but the per-bin reliability table."""
    return {key: value for key, value in metrics.items() if key != "reliability"}


def assess(
    runtime: ModelRuntime,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    settings: Settings,
    report_prefix: str,
    title: str,
    context: Mapping[str, Any],
    seed: int = 0,
    n_resamples: int = 1000,
    batch_size: int = 32,
    extra_files: Mapping[str, bytes] | None = None,
    present_only: bool = False,
) -> Assessment:
    """Score ``images`` (a dataset's cached gray inputs, see ``preprocess_gray``) through the
    model runtime, exactly as a worker would, then compute the figures and write the report."""
    scores = runtime.score_gray(images, batch_size)
    probs = scores.probabilities
    metrics = evaluate_predictions(
        labels, probs, runtime.classes, n_resamples=n_resamples, seed=seed, present_only=present_only
    )
    if runtime.operating_points:
        metrics["operating_points"] = operating_point_figures(
            labels, probs, runtime.classes, runtime.operating_points, n_resamples=n_resamples, seed=seed
        )
    if scores.out_of_distribution is not None:
        metrics["shift"] = {
            "flagged": int(scores.out_of_distribution.sum()),
            "flagged_share": float(scores.out_of_distribution.mean()),
            "median_percentile": float(np.median(scores.shift_percentiles)),
        }
    log.info(
        "%s: accuracy %.3f, macro-F1 %s, macro AUC %s (n=%d)",
        title,
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["macro_auc"],
        metrics["n"],
    )
    uri = write_report(
        open_store(settings=settings),
        report_prefix,
        title=title,
        metrics=metrics,
        y_true=labels,
        probs=probs,
        context=context,
        extra_files=extra_files,
    )
    return Assessment(
        metrics=metrics, report_uri=uri, probs=probs, shift_percentiles=scores.shift_percentiles
    )
