"""SQL side of a chunk: writing results once, giving up on poison chunks. (Who may run a chunk
at all is decided by its lease: ``worker.lease``.)

Idempotency under ``acks_late``: the chunk row is the unit. Its results (images, predictions,
failures, job counters) are written in one transaction that first locks the chunk row and
returns without writing if the chunk is already done, and the rows themselves are inserted with
``ON CONFLICT DO NOTHING``. A chunk delivered twice therefore counts once and stores one
prediction per image, even if both deliveries run at the same time.

Counting by content: the first writer of (image sha256, model version) scores it. Whether this
chunk was first is the prediction INSERT's own answer (``RETURNING`` the rows it inserted), not a
read before it: an image whose prediction another chunk or job committed first (identical bytes
under another name, scored at the same moment) is counted ``skipped`` (already scored).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr.core.db.jobs import add_to_counters, finished_in
from cxr.core.db.models import (
    CLASSIFICATION,
    Chunk,
    ChunkStatus,
    Failure,
    Image,
    JobImage,
    Prediction,
    utcnow,
)
from cxr.core.db.session import get_engine, insert_ignoring_conflicts, insert_returning, session_scope
from cxr.core.outcomes import FailureStage, Outcome, SkipReason
from cxr.core.privacy import DICOM_HASHED_COLUMNS
from cxr.core.settings import Settings
from modelstore import ResolvedModel
from worker import metrics
from worker.app import send_job_report
from worker.engine import ChunkOutcome, ImageFailure, SkippedImage
from worker.explaining import ExplainedImage, record_artifacts

log = logging.getLogger(__name__)

PREDICTION_KIND = CLASSIFICATION
_FINAL = (ChunkStatus.DONE, ChunkStatus.FAILED)


@dataclass(frozen=True)
class WriteSummary:
    scored: int
    failed: int
    already_done: bool = False
    skipped: int = 0
    #: What was really committed: scored images another writer had scored first moved to skipped.
    outcome: ChunkOutcome | None = None
    #: This chunk's transaction finished the job (its report has been asked for).
    finished_job: bool = False


def scored_hashes(settings: Settings, spec: ResolvedModel, sha256s: Sequence[str]) -> set[str]:
    """Those of ``sha256s`` that ``spec``'s exact version has already scored."""
    if not sha256s:
        return set()
    query = select(Prediction.image_sha256).where(
        Prediction.model_name == spec.name,
        Prediction.model_version == spec.version,
        Prediction.kind == PREDICTION_KIND,
        Prediction.image_sha256.in_(list(set(sha256s))),
    )
    # A plain connection, not an ORM session: this runs once per batch, and the session's
    # bookkeeping cost twice the query itself (0.8 against 0.3 ms of CPU).
    with get_engine(settings).connect() as connection:
        return {row[0] for row in connection.execute(query)}


def _job_image_rows(job_id: str, chunk_seq: int, outcome: ChunkOutcome) -> list[dict[str, object]]:
    rows: dict[str, dict[str, object]] = {}
    for kind, uri, sha256, reason in [
        *((Outcome.SCORED, r.image.uri, r.image.sha256, None) for r in outcome.scored),
        *((Outcome.SKIPPED, i.uri, i.sha256, i.reason) for i in outcome.skipped),
        *((Outcome.FAILED, f.uri, f.sha256, None) for f in outcome.failures),
    ]:
        rows.setdefault(
            uri,
            {
                "job_id": job_id, "uri": uri, "image_sha256": sha256, "outcome": kind.value,
                "chunk_seq": chunk_seq, "reason": None if reason is None else str(reason),
            },
        )  # fmt: skip
    return list(rows.values())


def _lock_chunk(session: Session, job_id: str, chunk_seq: int) -> Chunk | None:
    """The chunk row, locked for this transaction (PostgreSQL; SQLite locks on the first write)."""
    statement = select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == chunk_seq).with_for_update()
    return session.execute(statement).scalar_one_or_none()


def _failure_rows(job_id: str, failures: Iterable[ImageFailure]) -> list[dict[str, object]]:
    rows: dict[str, dict[str, object]] = {}
    for failure in failures:
        rows.setdefault(
            failure.uri,
            {
                "job_id": job_id,
                "image_uri": failure.uri,
                "image_sha256": failure.sha256,
                "stage": FailureStage(failure.stage).value,
                "reason": failure.reason,
            },
        )
    return list(rows.values())


def write_chunk(
    settings: Settings,
    job_id: str,
    chunk_seq: int,
    spec: ResolvedModel,
    classes: Sequence[str],
    outcome: ChunkOutcome,
    explained: Sequence[ExplainedImage] = (),
) -> WriteSummary:
    """Images, predictions, explanation artifacts, failures and counters of one chunk, in one
    transaction, once. Artifacts are committed with the chunk, so when a job's last chunk
    finishes the job, every explanation it asked for is already recorded."""
    with session_scope(settings) as session:
        chunk = _lock_chunk(session, job_id, chunk_seq)
        if chunk is not None and chunk.status in _FINAL:
            return WriteSummary(0, 0, already_done=True)
        images: dict[str, dict[str, object]] = {}
        predictions: dict[str, dict[str, object]] = {}
        for result in outcome.scored:
            image, probs = result.image, result.probabilities
            images.setdefault(
                image.sha256,
                {
                    "sha256": image.sha256,
                    "source_uri": image.uri,
                    "bytes": image.size,
                    "format": image.format,
                    "width": image.width,
                    "height": image.height,
                    **{column: image.hashed_ids.get(column) for column in DICOM_HASHED_COLUMNS.values()},
                },
            )
            predictions.setdefault(
                image.sha256,
                {
                    "image_sha256": image.sha256,
                    "model_name": spec.name,
                    "model_version": spec.version,
                    "kind": PREDICTION_KIND,
                    "label": result.label,
                    "confidence": float(probs[classes.index(result.label)]),
                    "probabilities": {name: float(p) for name, p in zip(classes, probs, strict=True)},
                    "shift_score": result.shift_score,
                    "shift_percentile": result.shift_percentile,
                    "out_of_distribution": result.out_of_distribution,
                    "job_id": job_id,
                },
            )
        insert_ignoring_conflicts(session, Image, list(images.values()))
        first = set(
            insert_returning(session, Prediction, list(predictions.values()), Prediction.image_sha256)
        )
        outcome = _count_by_content(outcome, first)
        record_artifacts(session, job_id, spec, explained)
        failed = insert_ignoring_conflicts(session, Failure, _failure_rows(job_id, outcome.failures))
        insert_ignoring_conflicts(session, JobImage, _job_image_rows(job_id, chunk_seq, outcome))
        _close_chunk(session, chunk, ChunkStatus.DONE)
        counts = {"scored": len(outcome.scored), "failed": failed, "skipped": len(outcome.skipped)}
        if not add_to_counters(session, job_id, **counts):
            session.rollback()  # cancelled meanwhile: the job stays as it was at cancel time
            log.info("job %s ended before chunk %d was written; results discarded", job_id, chunk_seq)
            return WriteSummary(0, 0, already_done=True)
        finished = job_id in finished_in(session)
    if finished:
        send_job_report(settings, job_id)  # after the commit: the report reads what it wrote
    return WriteSummary(
        len(outcome.scored), failed, skipped=len(outcome.skipped), outcome=outcome, finished_job=finished
    )


def _count_by_content(outcome: ChunkOutcome, first: set[str]) -> ChunkOutcome:
    """``outcome`` with every scored image whose prediction this transaction did not insert
    (another chunk or job committed the same bytes with the same version first) as skipped."""
    late = [r for r in outcome.scored if r.image.sha256 not in first]
    if not late:
        return outcome
    return ChunkOutcome(
        scored=[r for r in outcome.scored if r.image.sha256 in first],
        failures=outcome.failures,
        skipped=[
            *outcome.skipped,
            *(SkippedImage(r.image.uri, r.image.sha256, SkipReason.ALREADY_SCORED) for r in late),
        ],
    )


def _close_chunk(session: Session, chunk: Chunk | None, status: ChunkStatus) -> None:
    """Mark the chunk final and drop its lease, before the counters: a job is finished only
    once every chunk row is final, and that is checked by the counter update."""
    if chunk is None:
        return
    chunk.status = status
    chunk.finished_at = utcnow()
    chunk.lease_owner = None
    chunk.lease_expires_at = None
    session.flush()


def give_up_chunk(
    settings: Settings,
    spec: ResolvedModel,
    job_id: str,
    chunk_seq: int,
    uris: Sequence[str],
    stage: FailureStage,
    reason: str,
) -> WriteSummary:
    """Record every image of an unfinished chunk as failed, close the chunk, and count the
    failures in ``cxr_images_scored_total`` (the one place a whole chunk is given up: a model
    that cannot load, a poison chunk, a timeout, an unexpected error, exhausted retries)."""
    outcome = ChunkOutcome(failures=[ImageFailure(uri, stage, reason) for uri in uris])
    with session_scope(settings) as session:
        chunk = _lock_chunk(session, job_id, chunk_seq)
        if chunk is not None and chunk.status in _FINAL:
            return WriteSummary(0, 0, already_done=True)
        failed = insert_ignoring_conflicts(session, Failure, _failure_rows(job_id, outcome.failures))
        insert_ignoring_conflicts(session, JobImage, _job_image_rows(job_id, chunk_seq, outcome))
        _close_chunk(session, chunk, ChunkStatus.FAILED)
        if not add_to_counters(session, job_id, failed=failed):
            session.rollback()  # cancelled meanwhile: nothing recorded after the cancel
            return WriteSummary(0, 0, already_done=True)
        finished = job_id in finished_in(session)
    if finished:
        send_job_report(settings, job_id)
    metrics.count_images(spec, Outcome.FAILED, stage, failed)
    log.warning("gave up chunk %s/%d (%d images): %s", job_id, chunk_seq, len(uris), reason)
    return WriteSummary(0, failed, finished_job=finished)
