"""Submitting a bulk scoring job: pin the model, walk the source, cut chunks, enqueue them.

Resumable by construction. A job is identified by (source, model name, pinned version,
explain mode); running the same command again while such a job is unfinished resumes it. The
walk is deterministic, so chunk N holds the same URIs both times: chunks already done are not
sent again, chunks queued or running are sent again (the worker writes each chunk once, so a
duplicate costs only time), and the rest are created. Each chunk row is committed *before* its
task is sent, so a scheduler killed between the two loses nothing that a re-run cannot find.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select, update

from cxr.core.db.jobs import add_to_counters, finish_if_complete
from cxr.core.db.models import Chunk, ChunkStatus, Failure, Job, JobImage, JobStatus, utcnow
from cxr.core.db.session import insert_ignoring_conflicts, session_scope
from cxr.core.errors import PermanentError
from cxr.core.settings import Settings
from modelstore import ResolvedModel, open_model_store
from scheduler.sources import WalkItem, normalise_source, walk
from worker.app import send_classify_chunk

log = logging.getLogger(__name__)

ExplainMode = Literal["none", "positives", "all"]
_FINAL_CHUNK = (ChunkStatus.DONE, ChunkStatus.FAILED)


@dataclass(frozen=True)
class Submitted:
    job_id: str
    model: ResolvedModel
    resumed: bool
    total: int
    chunks_sent: int


#: Called after each chunk with (images walked so far, chunks sent so far).
ProgressCallback = Callable[[int, int], None]


def _batched(items: Iterable[WalkItem], size: int) -> Iterator[list[WalkItem]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def find_resumable_job(settings: Settings, source: str, model: ResolvedModel, explain: str) -> str | None:
    """The unfinished job for the same source, model version and explain mode, if any."""
    with session_scope(settings) as session:
        for job in session.scalars(
            select(Job)
            .where(
                Job.source == source,
                Job.model_name == model.name,
                Job.model_version == model.version,
                Job.status.in_([JobStatus.PENDING, JobStatus.RUNNING]),
            )
            .order_by(Job.created_at.desc())
        ):
            if job.options.get("explain", "none") == explain:
                return job.id
    return None


def create_job(settings: Settings, source: str, model: ResolvedModel, options: dict) -> str:
    with session_scope(settings) as session:
        job = Job(
            source=source,
            model_name=model.name,
            model_version=model.version,
            model_sha256=model.sha256,
            options=options,
        )
        session.add(job)
        session.flush()
        return job.id


def submit(
    settings: Settings,
    source: str,
    model_ref: str,
    *,
    chunk_size: int | None = None,
    explain: ExplainMode = "none",
    explain_method: str = "gradcam",
    on_progress: ProgressCallback | None = None,
) -> Submitted:
    """Create (or resume) the job and enqueue every chunk; returns once all are sent.

    Without a broker the chunks are scored right here, so this returns when the job is done.
    """
    chunk_size = chunk_size or settings.chunk_size
    if chunk_size < 1:
        raise PermanentError(f"chunk size must be at least 1, got {chunk_size}")
    source = normalise_source(source)
    model = open_model_store(settings).resolve(model_ref)  # pinned once, for the whole job
    job_id = find_resumable_job(settings, source, model, explain)
    resumed = job_id is not None
    if job_id is None:
        options = {"explain": explain, "explain_method": explain_method, "chunk_size": chunk_size}
        job_id = create_job(settings, source, model, options)
    else:
        log.info("resuming job %s (%s with %s)", job_id, source, model.ref)
        chunk_size = _stored_chunk_size(settings, job_id, chunk_size)

    walked = sent = seq = 0
    for batch in _batched(walk(source, settings), chunk_size):
        walked += len(batch)
        _record_walk_problems(settings, job_id, seq, [item for item in batch if item.problem])
        uris = [item.uri for item in batch if not item.problem]
        if uris and _prepare_chunk(settings, job_id, seq, uris):
            send_classify_chunk(settings, job_id, model.to_dict(), uris, seq)
            sent += 1
        seq += 1
        if on_progress is not None:
            on_progress(walked, sent)
    _close_walk(settings, job_id, walked)
    log.info("job %s: %d images in %d chunks, %d sent", job_id, walked, seq, sent)
    return Submitted(job_id, model, resumed, walked, sent)


def _stored_chunk_size(settings: Settings, job_id: str, requested: int) -> int:
    """A resumed job keeps the chunk size it started with, so its chunks line up again."""
    with session_scope(settings) as session:
        stored = int(session.get(Job, job_id).options.get("chunk_size", requested))
    if stored != requested:
        log.warning("job %s was cut into chunks of %d; keeping that size", job_id, stored)
    return stored


def _prepare_chunk(settings: Settings, job_id: str, seq: int, uris: list[str]) -> bool:
    """Create or check the chunk row (committed before sending); False if it needs no sending."""
    with session_scope(settings) as session:
        chunk = session.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq))
        if chunk is None:
            session.add(Chunk(job_id=job_id, seq=seq, uris=uris, status=ChunkStatus.QUEUED))
            session.execute(update(Job).where(Job.id == job_id).values(enqueued=Job.enqueued + len(uris)))
            return True
        if list(chunk.uris) != uris:
            raise PermanentError(
                f"the source changed since job {job_id} was submitted (chunk {seq} differs); "
                f"cancel it with `cxr jobs cancel {job_id}` and submit again"
            )
        return chunk.status not in _FINAL_CHUNK


def _record_walk_problems(settings: Settings, job_id: str, seq: int, items: list[WalkItem]) -> None:
    if not items:
        return
    with session_scope(settings) as session:
        failed = insert_ignoring_conflicts(
            session,
            Failure,
            [{"job_id": job_id, "image_uri": i.uri, "stage": "walk", "reason": i.problem} for i in items],
        )
        insert_ignoring_conflicts(
            session,
            JobImage,
            [{"job_id": job_id, "uri": i.uri, "outcome": "failed", "chunk_seq": seq} for i in items],
        )
        add_to_counters(session, job_id, failed=failed)


def _close_walk(settings: Settings, job_id: str, total: int) -> None:
    """The walk is complete: the total is known, and the job may already be finished."""
    with session_scope(settings) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.PENDING)
            .values(status=JobStatus.RUNNING, total=total, updated_at=utcnow())
        )
        finish_if_complete(session, job_id)


def cancel(settings: Settings, job_id: str) -> bool:
    """Stop a job: workers skip its remaining chunks. True if it was still running."""
    with session_scope(settings) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([JobStatus.PENDING, JobStatus.RUNNING]))
            .values(status=JobStatus.CANCELLED, finished_at=utcnow(), updated_at=utcnow())
        )
        if result.rowcount:
            return True
        if session.get(Job, job_id) is None:
            raise PermanentError(f"no job {job_id!r}")
        return False
