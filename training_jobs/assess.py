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
from training_jobs.report import write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assessment:
    metrics: dict[str, Any]
    report_uri: str
    probs: np.ndarray


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
    probs = runtime.predict_gray(images, batch_size)
    metrics = evaluate_predictions(
        labels, probs, runtime.classes, n_resamples=n_resamples, seed=seed, present_only=present_only
    )
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
    return Assessment(metrics=metrics, report_uri=uri, probs=probs)
