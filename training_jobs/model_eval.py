"""Evaluate a published model version on a dataset (``cxr evaluate``).

On a site's own labelled films this is the site validation: the figures are broken down by
``site``/``source`` when the listing names one, the operating points stored with the model are
measured (``assess``), and ``site_validation.site_verdict`` compares the figures with the ones the
model was published with.

The model is loaded into the model runtime (``modelstore.runtime``) and scored exactly as a
worker scores it: the same decoder, THE preprocessing function with the manifest's input
contract, the same compiled forward pass and conversion to class probabilities. The figures go
three places: a report in object storage, an ``Evaluation`` row in SQL, and the model's manifest
(``store.add_metrics``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.core.db.models import new_id
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from training_jobs import records
from training_jobs.assess import assess, manifest_values
from training_jobs.by_source import per_source_metrics
from training_jobs.datasets import load_dataset
from training_jobs.report import write_html
from training_jobs.site_validation import reference_record, site_verdict

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    model_ref: str
    evaluation_id: int
    report_uri: str
    metrics: dict[str, Any]
    data_fingerprint: str
    #: Each evaluated image's content hash and class probabilities, in dataset order.
    image_sha256: list[str] = field(default_factory=list)
    probabilities: np.ndarray | None = None


def evaluate_model(
    ref: str,
    source: str,
    settings: Settings,
    *,
    batch_size: int = 32,
    seed: int = 0,
    limit: int | None = None,
    bootstrap_resamples: int = 1000,
) -> EvaluationResult:
    from modelstore import MetricRecord, open_model_store
    from modelstore.runtime import ModelRuntime

    store = open_model_store(settings)
    runtime = ModelRuntime.load(store, store.resolve(ref), warm_up=False)
    manifest = runtime.manifest
    assert manifest is not None  # loaded from the store
    data = load_dataset(source, manifest.classes, manifest.input, settings, limit=limit, seed=seed)
    if data.fingerprint == manifest.training_data_fingerprint:
        log.warning(
            "%s is the very dataset %s was trained on: these figures include its training images",
            source,
            manifest.ref,
        )
    fitted = data.fingerprint in manifest.fitted_fingerprints and manifest.adaptation is not None
    if fitted:
        log.warning("%s's heads were fitted on %s: figures measured here reward memorising; its "
                    "cross-validated figures are in its manifest", manifest.ref, source)  # fmt: skip
    context = {
        "model": manifest.ref,
        "model sha256": manifest.sha256,
        "data": source,
        "data fingerprint": data.fingerprint,
        "images": len(data),
    }
    prefix = f"reports/evaluation/{manifest.name}-{manifest.version}-{new_id()}"
    title = f"{manifest.ref} on {source}"
    result = assess(
        runtime,
        data.images,
        data.labels,
        settings=settings,
        report_prefix=prefix,
        title=title,
        context=context,
        seed=seed,
        n_resamples=bootstrap_resamples,
        batch_size=batch_size,
        present_only=True,  # a site without pneumonia films is not charged an F1 of 0 for it
    )
    if any(source is not None for source in data.sources):
        result.metrics["per_source"] = per_source_metrics(
            data.labels,
            result.probs,
            manifest.classes,
            data.sources,
            n_resamples=bootstrap_resamples,
            seed=seed,
        )
    result.metrics["site_verdict"] = site_verdict(result.metrics, reference_record(manifest.metrics))
    # The page again, now with the per-source figures and the verdict.
    write_html(open_store(settings=settings), prefix, title=title, metrics=result.metrics, context=context)
    values = manifest_values(result.metrics) | {"data_fingerprint": data.fingerprint}
    if fitted:
        values["fitted_on_these_films"] = True
    evaluation_id = records.record_evaluation(
        settings,
        model_name=manifest.name,
        model_version=manifest.version,
        dataset=source,
        data_fingerprint=data.fingerprint,
        n_images=len(data),
        metrics=values,
        report_uri=result.report_uri,
    )
    store.add_metrics(
        manifest.name, manifest.version, MetricRecord(dataset=source, n=len(data), values=values)
    )
    log.info("evaluated %s on %s: report %s", manifest.ref, source, result.report_uri)
    return EvaluationResult(
        manifest.ref, evaluation_id, result.report_uri, result.metrics, data.fingerprint,
        image_sha256=list(data.sha256), probabilities=result.probs,
    )  # fmt: skip
