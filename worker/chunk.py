"""Scoring one chunk end to end: the body of ``cxr.classify_chunk``, callable without Celery.

The Celery task (``worker.tasks``) and the in-process path (no broker configured) both call
``run_classify_chunk``; the task adds only retries. Transient errors propagate to the caller;
permanent ones end up as failure rows.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cxr.core.db.session import session_scope
from cxr.core.errors import ModelStoreError
from cxr.core.outcomes import FailureStage, Outcome
from cxr.core.settings import Settings
from cxr.core.storage.fetch import ObjectFetcher, process_fetcher
from modelstore import ResolvedModel
from worker import metrics
from worker.engine import classify_uris
from worker.explaining import explain_options, explain_uris, record_artifacts, select_for_explanation
from worker.model_cache import ModelCache, process_cache
from worker.results import Delivery, give_up_chunk, record_delivery, scored_hashes, write_chunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkReport:
    """What happened to a chunk (JSON-able through ``as_dict``; logged, never sent back)."""

    job_id: str
    chunk_seq: int
    status: str  # done | already-done | skipped | gave-up
    scored: int = 0
    failed: int = 0
    seconds: float = 0.0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_classify_chunk(
    settings: Settings,
    job_id: str,
    model: Mapping[str, Any],
    uris: Sequence[str],
    chunk_seq: int,
    *,
    attempt: int = 0,
    cache: ModelCache | None = None,
    fetcher: ObjectFetcher | None = None,
) -> ChunkReport:
    """Score ``uris`` with the pinned ``model`` for ``job_id`` and record the results once.

    ``attempt`` is the number of earlier retries after transient errors: those deliveries ended
    cleanly, so they do not count towards ``max_deliveries``, which is about worker deaths.
    """
    started = time.perf_counter()
    spec = ResolvedModel.from_dict(model)
    delivery = record_delivery(settings, job_id, chunk_seq, uris)
    if not delivery.runnable:
        log.info("skipping chunk %s/%d: %s", job_id, chunk_seq, delivery.reason)
        return ChunkReport(job_id, chunk_seq, "skipped", reason=delivery.reason)
    report = _give_up_if_poisoned(settings, job_id, chunk_seq, spec, uris, delivery, attempt)
    if report is not None:
        return report

    try:
        loaded = (cache or process_cache(settings)).get(spec)
    except ModelStoreError as exc:  # the pinned model is gone or corrupt: no retry can help
        reason = f"model {spec.name}@{spec.version} unavailable: {exc}"
        summary = give_up_chunk(settings, spec, job_id, chunk_seq, uris, FailureStage.MODEL, reason)
        return ChunkReport(job_id, chunk_seq, "gave-up", failed=summary.failed, reason=reason)

    fetcher = fetcher or process_fetcher(settings)
    outcome = classify_uris(
        uris, loaded, settings, fetcher, already_scored=functools.partial(scored_hashes, settings, spec)
    )
    mode, method = explain_options(settings, job_id)
    to_explain = select_for_explanation(settings, spec, outcome, mode, method)
    explained = explain_uris(settings, spec, loaded, to_explain, method, fetcher) if to_explain else []
    write_started = time.perf_counter()
    summary = write_chunk(settings, job_id, chunk_seq, spec, loaded.classes, outcome, explained)
    metrics.STAGE_DURATION.labels(stage="write").observe(time.perf_counter() - write_started)
    seconds = time.perf_counter() - started
    if summary.already_done:
        log.info("chunk %s/%d was finished by another delivery; nothing written", job_id, chunk_seq)
        return ChunkReport(job_id, chunk_seq, "already-done", seconds=seconds)

    metrics.CHUNK_DURATION.observe(seconds)
    for result in outcome.scored:
        metrics.count_images(spec, Outcome.SCORED, result.label)
    for failure in outcome.failures:
        metrics.count_images(spec, Outcome.FAILED, failure.stage)
    metrics.count_images(spec, Outcome.SKIPPED, "", len(outcome.skipped))
    log.info(
        "chunk %s/%d: %d scored, %d skipped, %d failed in %.2f s with %s@%d",
        job_id, chunk_seq, summary.scored, summary.skipped, len(outcome.failures), seconds, spec.name,
        spec.version,
    )  # fmt: skip
    return ChunkReport(job_id, chunk_seq, "done", summary.scored, summary.failed, seconds)


def _give_up_if_poisoned(
    settings: Settings,
    job_id: str,
    chunk_seq: int,
    spec: ResolvedModel,
    uris: Sequence[str],
    delivery: Delivery,
    attempt: int,
) -> ChunkReport | None:
    """After ``max_deliveries`` starts that never finished, record the images as failures."""
    starts = delivery.deliveries - attempt
    if starts <= settings.max_deliveries:
        return None
    deaths = starts - 1
    reason = f"worker died {deaths} times on this chunk"
    summary = give_up_chunk(settings, spec, job_id, chunk_seq, uris, FailureStage.WORKER, reason)
    return ChunkReport(job_id, chunk_seq, "gave-up", failed=summary.failed, reason=reason)


def run_explain_chunk(
    settings: Settings,
    job_id: str | None,
    model: Mapping[str, Any],
    uris: Sequence[str],
    method: str,
    *,
    cache: ModelCache | None = None,
    fetcher: ObjectFetcher | None = None,
) -> int:
    """Explain ``uris`` with the pinned model (the body of ``cxr.explain_chunk``); returns how
    many were explained. Re-running it rewrites the same objects and adds no rows."""
    spec = ResolvedModel.from_dict(model)
    loaded = (cache or process_cache(settings)).get(spec)
    explained = explain_uris(settings, spec, loaded, uris, method, fetcher or process_fetcher(settings))
    with session_scope(settings) as session:
        record_artifacts(session, job_id, spec, explained)
    return len(explained)
