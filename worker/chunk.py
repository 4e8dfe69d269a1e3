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
from cxr.core.imaging.lungs import fallback_counts
from cxr.core.outcomes import FailureStage, Outcome, one_line
from cxr.core.settings import Settings
from cxr.core.storage.fetch import ObjectFetcher, process_fetcher
from modelstore import ResolvedModel
from modelstore.runtime import ModelRuntime
from worker import metrics
from worker.engine import ChunkOutcome, classify_uris
from worker.explaining import (
    ExplainedImage,
    explain_options,
    explain_uris,
    record_artifacts,
    select_for_explanation,
)
from worker.lease import Claim, Heartbeat, claim, release
from worker.model_cache import ModelCache, process_cache
from worker.results import give_up_chunk, scored_hashes, write_chunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkReport:
    """What happened to a chunk (JSON-able through ``as_dict``; logged, never sent back)."""

    job_id: str
    chunk_seq: int
    status: str  # done | already-done | skipped | duplicate | gave-up
    scored: int = 0
    failed: int = 0
    seconds: float = 0.0
    reason: str = ""
    retry_in: float = 0.0  # duplicate: when the live lease it found would run out

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

    Runs only under the chunk's lease (``worker.lease``): a delivery that finds the chunk final
    or leased by a live holder returns at once (``already-done`` / ``duplicate``) and counts
    nothing. ``attempt`` (earlier retries after transient errors) is kept for the task's own
    retry limit; deaths are counted by the lease, not by starts.
    """
    started = time.perf_counter()
    spec = ResolvedModel.from_dict(model)
    taken = claim(settings, job_id, chunk_seq, uris)
    if not taken.claimed:
        log.info("not running chunk %s/%d: %s", job_id, chunk_seq, taken.reason)
        status = {"final": "already-done", "duplicate": "duplicate"}.get(taken.status, "skipped")
        return ChunkReport(job_id, chunk_seq, status, reason=taken.reason, retry_in=taken.retry_in)
    try:
        with Heartbeat(settings, job_id, chunk_seq, taken.owner):
            return _run_claimed(settings, job_id, chunk_seq, spec, uris, taken, started, cache, fetcher)
    finally:
        release(settings, job_id, chunk_seq, taken.owner)  # a no-op once the chunk is final


def _run_claimed(
    settings: Settings,
    job_id: str,
    chunk_seq: int,
    spec: ResolvedModel,
    uris: Sequence[str],
    taken: Claim,
    started: float,
    cache: ModelCache | None,
    fetcher: ObjectFetcher | None,
) -> ChunkReport:
    if taken.deaths >= settings.max_deliveries:  # a poison chunk: it killed every holder
        reason = f"worker died {taken.deaths} times on this chunk"
        summary = give_up_chunk(settings, spec, job_id, chunk_seq, uris, FailureStage.WORKER, reason)
        return ChunkReport(job_id, chunk_seq, "gave-up", failed=summary.failed, reason=reason)

    try:
        loaded = (cache or process_cache(settings)).get(spec)
    except ModelStoreError as exc:  # the pinned model is gone or corrupt: no retry can help
        reason = f"model {spec.name}@{spec.version} unavailable: {exc}"
        summary = give_up_chunk(settings, spec, job_id, chunk_seq, uris, FailureStage.MODEL, reason)
        return ChunkReport(job_id, chunk_seq, "gave-up", failed=summary.failed, reason=reason)

    fetcher = fetcher or process_fetcher(settings)
    masks_before = fallback_counts()
    outcome = classify_uris(
        uris, loaded, settings, fetcher, already_scored=functools.partial(scored_hashes, settings, spec)
    )
    metrics.count_lung_masks(spec, masks_before, fallback_counts())
    explained = _explain_isolated(settings, job_id, spec, loaded, outcome, fetcher)
    write_started = time.perf_counter()
    summary = write_chunk(settings, job_id, chunk_seq, spec, loaded.classes, outcome, explained)
    metrics.STAGE_DURATION.labels(stage="write").observe(time.perf_counter() - write_started)
    seconds = time.perf_counter() - started
    if summary.already_done or summary.outcome is None:
        log.info("chunk %s/%d was finished by another delivery; nothing written", job_id, chunk_seq)
        return ChunkReport(job_id, chunk_seq, "already-done", seconds=seconds)

    written = summary.outcome
    metrics.CHUNK_DURATION.observe(seconds)
    for result in written.scored:
        metrics.count_images(spec, Outcome.SCORED, result.label)
    for failure in written.failures:
        metrics.count_images(spec, Outcome.FAILED, failure.stage)
    metrics.count_images(spec, Outcome.SKIPPED, "", len(written.skipped))
    log.info(
        "chunk %s/%d: %d scored, %d skipped, %d failed in %.2f s with %s@%d",
        job_id, chunk_seq, summary.scored, summary.skipped, len(written.failures), seconds, spec.name,
        spec.version,
    )  # fmt: skip
    return ChunkReport(job_id, chunk_seq, "done", summary.scored, summary.failed, seconds)


def _explain_isolated(
    settings: Settings,
    job_id: str,
    spec: ResolvedModel,
    loaded: ModelRuntime,
    outcome: ChunkOutcome,
    fetcher: ObjectFetcher,
) -> list[ExplainedImage]:
    """The chunk's explanations, or none: whatever goes wrong while explaining (the explainer
    cannot be built, the store is full or unreachable, a transient error) is logged and counted,
    and the chunk's predictions are committed regardless. Per-image errors are already handled
    in ``explain_uris``; this is the net around the whole step."""
    mode, method = explain_options(settings, job_id)
    to_explain: list[str] = []
    try:
        to_explain = list(select_for_explanation(settings, spec, outcome, mode, method))
        return explain_uris(settings, spec, loaded, to_explain, method, fetcher) if to_explain else []
    except Exception as exc:
        log.error("chunk %s: explanations failed, predictions kept: %s", job_id, one_line(exc))
        metrics.EXPLANATIONS.labels(spec.name, str(spec.version), method, "failed").inc(len(to_explain))
        return []


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
