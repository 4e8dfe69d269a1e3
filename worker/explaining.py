"""Explanations on the worker: heatmaps, overlays and ROIs for a job's images, as artifacts.

The images are fetched and decoded again rather than kept from scoring: an overlay needs the
original pixels, and holding a chunk of full-size radiographs in memory for the few that get
explained would cost far more than re-reading them. Explaining is idempotent: an image that
already has this model version's overlay for this method is not explained again, so a
redelivered chunk (or a chunk whose worker died after scoring but before explaining) ends with
exactly one set of artifacts per image.

An explanation that fails (the image cannot be re-read, the model cannot be explained, the
artifacts cannot be written: a full or unreachable store) is logged and counted, never recorded
as a failed image: the image *was* scored, and its prediction stands.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr.core.db.models import CLASSIFICATION, Artifact, Job, Prediction
from cxr.core.db.session import session_scope
from cxr.core.errors import TransientError
from cxr.core.imaging import decode_image
from cxr.core.labels import is_positive
from cxr.core.outcomes import one_line
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from cxr.core.storage.fetch import ObjectFetcher
from cxr.explain.artifacts import (
    ArtifactRecord,
    artifact_prefix,
    explanation_params,
    insert_artifacts,
    write_artifacts,
)
from modelstore import ResolvedModel
from modelstore.runtime import ModelRuntime
from worker import metrics
from worker.engine import ChunkOutcome
from worker.lifecycle import model_on_cpu, process_cores

log = logging.getLogger(__name__)

DEFAULT_METHOD = "gradcam"
PREDICTION_KIND = CLASSIFICATION


#: One explained image: its sha256 and the artifact records of its written files.
ExplainedImage = tuple[str, list[ArtifactRecord]]


def explain_options(settings: Settings, job_id: str) -> tuple[str, str]:
    """The job's explain mode (none | positives | all) and method."""
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        options = (job.options or {}) if job is not None else {}
    return options.get("explain", "none"), options.get("explain_method", DEFAULT_METHOD)


def select_for_explanation(
    settings: Settings, spec: ResolvedModel, outcome: ChunkOutcome, mode: str, method: str
) -> list[str]:
    """URIs of a scored chunk to explain: positives or all, one per distinct image, minus the
    images this model version has already explained with this method."""
    if mode == "none":
        return []
    labels: dict[str, tuple[str, str]] = {}  # sha256 -> (uri, predicted label)
    for result in outcome.scored:
        labels.setdefault(result.image.sha256, (result.image.uri, result.label))
    skipped = {
        image.sha256: image.uri for image in outcome.skipped if image.sha256 and image.sha256 not in labels
    }
    with session_scope(settings) as session:
        if skipped:
            for sha, label in session.execute(
                select(Prediction.image_sha256, Prediction.label).where(
                    Prediction.model_name == spec.name,
                    Prediction.model_version == spec.version,
                    Prediction.kind == PREDICTION_KIND,
                    Prediction.image_sha256.in_(list(skipped)),
                )
            ):
                labels[sha] = (skipped[sha], label)
        wanted = {sha: uri for sha, (uri, label) in labels.items() if mode == "all" or is_positive(label)}
        if not wanted:
            return []
        done = {
            sha
            for sha, uri in session.execute(
                select(Artifact.image_sha256, Artifact.uri).where(
                    Artifact.kind == "overlay", Artifact.image_sha256.in_(list(wanted))
                )
            )
            if uri.rsplit("/", 1)[0].endswith(artifact_prefix(spec.name, spec.version, method, sha))
        }
    return sorted(uri for sha, uri in wanted.items() if sha not in done)


def explain_uris(
    settings: Settings,
    spec: ResolvedModel,
    runtime: ModelRuntime,
    uris: Sequence[str],
    method: str,
    fetcher: ObjectFetcher,
) -> list[ExplainedImage]:
    """Explain ``uris`` in batches and write the files to object storage; the SQL rows are the
    caller's to insert (with the chunk's results, in the same transaction)."""
    from cxr.explain.render import render_files

    explainer = runtime.explainer(method)
    store = open_store(settings=settings)
    explained: list[ExplainedImage] = []
    failed = 0

    def load(uri: str) -> tuple[str, bytes, Any] | None:
        try:
            data = fetcher.fetch(uri)
            film = decode_image(
                data,
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
                target_side=runtime.contract.decode_side,  # the pixels the scores came from
            )
        except TransientError:
            raise
        except Exception as exc:  # this image only; its prediction stands
            log.warning("cannot explain %s: %s", uri, one_line(exc))
            return None
        return uri, data, film

    batch_size = settings.batch_size_for(model_on_cpu())
    threads = settings.decode_threads_for(model_on_cpu(), process_cores())
    with ThreadPoolExecutor(threads, thread_name_prefix="cxr-explain") as pool:
        for start in range(0, len(uris), batch_size):
            started = time.perf_counter()
            loaded_images = [item for item in pool.map(load, uris[start : start + batch_size]) if item]
            failed += min(batch_size, len(uris) - start) - len(loaded_images)
            if not loaded_images:
                continue
            try:
                items = explainer.explain(
                    [film.pixels for _, _, film in loaded_images],
                    scales=[film.scale for _, _, film in loaded_images],
                )
            except Exception as exc:  # a model that cannot be explained must not fail the scoring
                log.error("explaining a batch with %s failed: %s", spec.ref, one_line(exc))
                failed += len(loaded_images)
                continue
            for (uri, data, film), item in zip(loaded_images, items, strict=True):
                sha256 = hashlib.sha256(data).hexdigest()
                try:
                    records = write_artifacts(
                        store, render_files(item, film.pixels), model_name=spec.name,
                        model_version=spec.version, method=item.method, image_sha256=sha256,
                        params=explanation_params(item),
                    )  # fmt: skip
                except Exception as exc:  # a full or unreachable store: counted, the scores stand
                    log.warning("cannot write the explanation of %s: %s", uri, one_line(exc))
                    failed += 1
                    continue
                explained.append((sha256, records))
            metrics.STAGE_DURATION.labels(stage="explain").observe(time.perf_counter() - started)
    metrics.EXPLANATIONS.labels(spec.name, str(spec.version), method, "explained").inc(len(explained))
    metrics.EXPLANATIONS.labels(spec.name, str(spec.version), method, "failed").inc(failed)
    return explained


def record_artifacts(
    session: Session, job_id: str | None, spec: ResolvedModel, rows: Sequence[ExplainedImage]
) -> None:
    """Artifact rows for explained images, linked to their prediction and image when scored."""
    if not rows:
        return
    prediction_ids = dict(
        session.execute(
            select(Prediction.image_sha256, Prediction.id).where(
                Prediction.model_name == spec.name,
                Prediction.model_version == spec.version,
                Prediction.kind == PREDICTION_KIND,
                Prediction.image_sha256.in_([sha for sha, _ in rows]),
            )
        ).all()
    )
    for sha256, records in rows:
        scored = sha256 in prediction_ids
        insert_artifacts(
            session, records, prediction_id=prediction_ids.get(sha256),
            image_sha256=sha256 if scored else None, job_id=job_id,
        )  # fmt: skip
