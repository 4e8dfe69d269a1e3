"""``cxr adapt``: the I/O around ``training_jobs.adapt`` (store, datasets, SQL, publishing).

The original training films are recomputed, never stored: the parent's manifest names the
training data by fingerprint, its ``TrainingRun`` row holds the data's location and the split's
parameters, and the split's salted patient hashes check that the split rebuilt today is the one
the heads were fitted on. Anything missing or different (data moved, edited, a model imported
rather than trained) makes ``mix=original`` unavailable, and the reason is said in full.

The child keeps the parent's shift reference. The base is frozen, so the features it describes
are unchanged, and its question stays "is this film unlike the data the base's heads were first
trained on". Refitting it on a few dozen local films would need validation scores from local
films we do not have spare, and would teach it to call the site's own drift familiar.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from cxr.core.db.models import TrainingRun
from cxr.core.db.session import session_scope
from cxr.core.errors import ConfigurationError, CxrError
from cxr.core.privacy import hash_identifier
from cxr.core.settings import Settings
from modelstore.manifest import Adaptation, Manifest, MetricRecord, validate_alias, validate_name
from modelstore.runtime import ModelRuntime
from training_jobs import records
from training_jobs.adapt import (
    AdaptationResult,
    Mix,
    Problem,
    adapt_heads,
    current_heads,
    model_heads,
    write_heads,
)
from training_jobs.assess import manifest_values
from training_jobs.datasets import load_dataset
from training_jobs.splits import split_holding_out_sources

log = logging.getLogger(__name__)


def original_training_features(
    settings: Settings, manifest: Manifest, runtime: ModelRuntime
) -> tuple[np.ndarray, np.ndarray] | str:
    """(features, labels) of the parent's training split, or why they cannot be had."""
    with session_scope(settings) as session:
        run = session.scalars(
            select(TrainingRun).where(
                TrainingRun.name == manifest.name, TrainingRun.model_version == manifest.version,
                TrainingRun.status == "finished",
            )
        ).first()  # fmt: skip
        if run is None:
            return f"no finished training run in SQL published {manifest.ref} (imported, or another database)"
        params, recorded = dict(run.params), dict(run.split or {})
    try:
        data = load_dataset(params["data"], manifest.classes, manifest.input, settings,
                            limit=params.get("limit"), seed=int(params.get("seed", 0)))  # fmt: skip
    except (CxrError, OSError, KeyError) as exc:
        return f"the training data {params.get('data')!r} cannot be read any more: {exc}"
    if data.fingerprint != manifest.training_data_fingerprint:
        return (f"{params['data']} is not the data {manifest.ref} was trained on (fingerprint "
                f"{data.fingerprint[:12]}… vs {str(manifest.training_data_fingerprint)[:12]}…)")  # fmt: skip
    split = split_holding_out_sources(
        data.patient_ids, data.labels, data.sources, params.get("holdout_sources") or (),
        seed=int(params.get("seed", 0)), fractions=tuple(params.get("fractions", (0.7, 0.1, 0.2))),
    )  # fmt: skip
    rebuilt = sorted(hash_identifier(p, settings) for p in split.patients["train"])
    if rebuilt != recorded.get("patients", {}).get("train"):
        return "the training split rebuilt today differs from the one recorded with the run"
    return runtime.features_gray(data.images[split.train]), data.labels[split.train]


@dataclass
class AdaptOutcome:
    parent: str
    result: AdaptationResult
    local_fingerprint: str
    n_local: int
    n_per_class: dict[str, int]
    n_original: int
    published: str | None
    penalties: dict[str, float]


def cv_label(local_data: str, folds: int, what: str) -> str:
    return f"{local_data} cross-validated (patient-grouped, {folds} folds): {what}"


def adapt_model(
    ref: str, local_data: str, name: str, settings: Settings, *, mix: Mix = "original", publish: bool = False,
    aliases: tuple[str, ...] = (), seed: int = 0, bootstrap_resamples: int = 1000,
) -> AdaptOutcome:  # fmt: skip
    from modelstore import open_model_store
    from modelstore.loading import library_versions

    validate_name(name)
    for alias in aliases:
        validate_alias(alias)
    store = open_model_store(settings)
    resolved = store.resolve(ref)
    runtime = ModelRuntime.load(store, resolved, warm_up=False)
    manifest = runtime.manifest
    assert manifest is not None
    local = load_dataset(local_data, manifest.classes, manifest.input, settings, seed=seed)
    slices = model_heads(runtime.model, runtime.feature_layers)
    x_local = runtime.features_gray(local.images)
    x_original = np.zeros((0, x_local.shape[1]))
    y_original = np.zeros(0, dtype=np.int64)
    if mix == "original":
        found = original_training_features(settings, manifest, runtime)
        if isinstance(found, str):
            raise ConfigurationError(f"--mix original is unavailable: {found}. Use --mix local-only.")
        x_original, y_original = found
    problem = Problem(x_local, local.labels, local.patient_ids, x_original, y_original, slices,
                      len(manifest.classes), manifest.output)  # fmt: skip
    targets = {c: p.target_sensitivity for c, p in manifest.operating_points.items()} or None
    result = adapt_heads(problem, current_heads(runtime.model, slices), manifest.classes, mix=mix, seed=seed,
                         targets=targets, n_resamples=bootstrap_resamples)  # fmt: skip
    penalties = {s.dense_layer: result.penalty for s in slices}
    outcome = AdaptOutcome(manifest.ref, result, local.fingerprint, len(local), local.counts(),
                           len(y_original), None, penalties)  # fmt: skip
    evaluations = [
        (cv_label(local_data, result.folds, f"adapted ({mix})"), result.cv_metrics, "adapted"),
        (cv_label(local_data, result.folds, f"unadapted {manifest.ref}, same films"), result.parent_metrics,
         "parent"),
    ]  # fmt: skip

    def values(metrics: dict[str, Any], role: str) -> dict[str, Any]:
        return manifest_values(metrics) | {"cross_validated": True, "role": role,
                                           "data_fingerprint": local.fingerprint}  # fmt: skip

    version = None
    if publish:
        write_heads(runtime.model, slices, result.heads)
        pulled = store.pull(resolved)
        shift = None
        if manifest.shift is not None and pulled.shift_path is not None:
            shift = (manifest.shift, pulled.shift_path.read_bytes())
        with tempfile.TemporaryDirectory() as tmp:
            model_file = Path(tmp) / "model.keras"
            runtime.model.save(model_file)
            child = store.publish(
                name, model_file, architecture=manifest.architecture, classes=manifest.classes,
                input_contract=manifest.input, output=manifest.output, gradcam_layer=manifest.gradcam_layer,
                metrics=[MetricRecord(dataset=label, n=m["n"], values=values(m, role))
                         for label, m, role in evaluations],
                training_data_fingerprint=manifest.training_data_fingerprint,
                parent_version=manifest.version if name == manifest.name else None,
                library_versions=library_versions(),
                description=f"{manifest.ref} adapted to {local_data} by cxr adapt ({mix}): logistic heads "
                "refitted on the frozen features",
                aliases=aliases, shift=shift, operating_points=result.operating_points,
                adaptation=Adaptation(
                    parent=manifest.ref, parent_sha256=manifest.sha256, local_data=local_data,
                    local_data_fingerprint=local.fingerprint, n_local=len(local), mix=mix,
                    local_share=result.local_share, penalties=penalties, folds=result.folds,
                ),
            )  # fmt: skip
        version = child.version
        outcome.published = child.ref
    for label, metrics, role in evaluations:
        records.record_evaluation(
            settings, model_name=name if role == "adapted" else manifest.name,
            model_version=version if role == "adapted" else manifest.version, dataset=label,
            data_fingerprint=local.fingerprint, n_images=metrics["n"], metrics=values(metrics, role),
            report_uri=None,
        )  # fmt: skip
    return outcome
