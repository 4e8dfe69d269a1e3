"""Measure a model on labelled images, write the report, record it: shared by ``cxr train``
(on the test split) and ``cxr evaluate`` (on any dataset), so both report the same way."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.core.imaging import InputContract
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from training_jobs.evaluation import as_class_probabilities, evaluate_predictions
from training_jobs.pipeline import make_dataset
from training_jobs.report import write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assessment:
    metrics: dict[str, Any]
    report_uri: str
    probs: np.ndarray


def predict_probabilities(
    model: Any, images: np.ndarray, contract: InputContract, output: str, batch_size: int = 32
) -> np.ndarray:
    """(N, K) class probabilities for gray-unit cached images (see ``training_jobs.datasets``)."""
    dataset = make_dataset(images, None, contract, output=output, batch_size=batch_size)
    return as_class_probabilities(model.predict(dataset, verbose=0), output)


def manifest_values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures that go into a model manifest: everything but the per-bin reliability table."""
    return {key: value for key, value in metrics.items() if key != "reliability"}


def assess(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classes: list[str],
    contract: InputContract,
    output: str,
    settings: Settings,
    report_prefix: str,
    title: str,
    context: Mapping[str, Any],
    seed: int = 0,
    n_resamples: int = 1000,
    batch_size: int = 32,
    extra_files: Mapping[str, bytes] | None = None,
) -> Assessment:
    probs = predict_probabilities(model, images, contract, output, batch_size)
    metrics = evaluate_predictions(labels, probs, classes, n_resamples=n_resamples, seed=seed)
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
