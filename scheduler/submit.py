"""Submitting a bulk scoring job: pin the model, walk the source, cut chunks, enqueue them.

Resumable by construction. A job is identified by (source, model name, pinned version,
explain mode); running the same command again while such a job is unfinished resumes it. The
database enforces one unfinished job per identity (``jobs.active_identity`` is unique): the job
row is created with ``INSERT ... ON CONFLICT DO NOTHING``, and a scheduler that loses a race
with an identical one resumes the winner's job. The walk is deterministic, so chunk N holds the
same URIs both times: chunks already done are not sent again, nor are chunks running under a
live lease; chunks queued (perhaps lost with the broker) are sent again (a duplicate delivery
costs one lookup), and the rest are created, also as upserts. Each chunk row is committed
*before* its task is sent, so a scheduler killed between the two loses nothing that a re-run
cannot find.

A source that changed or grew after its job's walk was closed is refused: its job would
otherwise finish with counts that disagree with its total. An unfinished job for the same source
pinned to another version of the model (the alias moved after a crash) is reported rather than
silently left pending. A cancel stops the submission loop at the next chunk. An error while a
new job's chunks are sent marks that job failed with the reason (nothing is left pending); a
killed scheduler's job stays pending and is resumed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select, update

from cxr.core.db.jobs import FINAL_CHUNK, add_to_counters, finish_if_complete, finished_in, job_identity
from cxr.core.db.models import Chunk, ChunkStatus, Failure, Job, JobImage, JobStatus, new_id, utcnow
from cxr.core.db.session import insert_ignoring_conflicts, insert_returning, session_scope
from cxr.core.errors import PermanentError
from cxr.core.outcomes import one_line
from cxr.core.settings import Settings
from modelstore import ResolvedModel, open_model_store, parse_ref
from scheduler.sources import WalkItem, normalise_source, walk
from worker.app import check_broker, send_classify_chunk, send_job_report

log = logging.getLogger(__name__)

ExplainMode = Literal["none", "positives", "all"]
_UNFINISHED = (JobStatus.PENDING, JobStatus.RUNNING)


class JobCancelled(PermanentError):
    """The job was cancelled while its chunks were being sent: submission stopped."""


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
    identity = job_identity(source, model.name, model.version, explain)
    with session_scope(settings) as session:
        return session.scalar(select(Job.id).where(Job.active_identity == identity))


def unfinished_with_other_version(
    settings: Settings, source: str, model: ResolvedModel, explain: str
) -> tuple[str, int] | None:
    """An unfinished job for the same source and explain mode pinned to another version."""
    with session_scope(settings) as session:
        for job in session.scalars(
            select(Job)
            .where(
                Job.source == source,
                Job.model_name == model.name,
                Job.model_version != model.version,
                Job.status.in_(_UNFINISHED),
            )
            .order_by(Job.created_at.desc())
        ):
            if job.options.get("explain", "none") == explain:
                return job.id, job.model_version
    return None


def create_job(settings: Settings, source: str, model: ResolvedModel, options: dict) -> tuple[str, bool]:
    """The job for this identity: (id, True) if this call created it, (id, False) if an identical
    submission holds it (created first, or at the same moment: the unique index decides)."""
    identity = job_identity(source, model.name, model.version, str(options.get("explain", "none")))
    row = {
        "id": new_id(), "source": source, "model_name": model.name, "model_version": model.version,
        "model_sha256": model.sha256, "options": options, "status": JobStatus.PENDING,
        "active_identity": identity,
    }  # fmt: skip
    with session_scope(settings) as session:
        if insert_returning(session, Job, [row], Job.id):
            return str(row["id"]), True
        existing = session.scalar(select(Job.id).where(Job.active_identity == identity))
    if existing is None:  # the winner ended between our insert and our read: try once more
        return create_job(settings, source, model, options)
    return existing, False


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
    chunk_size = settings.chunk_size if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise PermanentError(f"chunk size must be at least 1, got {chunk_size}")
    source = normalise_source(source)
    model = open_model_store(settings).resolve(model_ref)  # pinned once, for the whole job
    if not settings.in_process:
        check_broker(settings)  # before any job row: a broker that is down leaves nothing pending
    job_id = find_resumable_job(settings, source, model, explain)
    if job_id is None and not parse_ref(model_ref)[1].isdigit():
        _refuse_if_unfinished_elsewhere(settings, source, model, explain)
    resumed = job_id is not None
    if job_id is None:
        options = {"explain": explain, "explain_method": explain_method, "chunk_size": chunk_size}
        job_id, created = create_job(settings, source, model, options)
        resumed = not created
    try:
        return _walk_and_send(settings, job_id, source, model, chunk_size, resumed, on_progress)
    except JobCancelled:
        raise
    except Exception as exc:  # an error; a kill (KeyboardInterrupt, SIGKILL) leaves it resumable
        if not resumed:  # this call's own job: never left pending by a submission that broke off
            fail_job(settings, job_id, f"submission failed: {one_line(exc)}")
        raise


def fail_job(settings: Settings, job_id: str, reason: str) -> None:
    """Mark an unfinished job failed with ``reason`` (workers then discard its remaining chunks,
    as for a cancel). Best effort: the error that got us here is the one to report."""
    try:
        with session_scope(settings) as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(_UNFINISHED))
                .values(
                    status=JobStatus.FAILED, error=reason[:2000], finished_at=utcnow(), updated_at=utcnow(),
                    active_identity=None,
                )
            )  # fmt: skip
        log.error("job %s failed: %s", job_id, reason)
    except Exception as exc:  # the database itself may be what failed
        log.error("job %s could not be marked failed (%s): %s", job_id, one_line(exc), reason)


def _walk_and_send(
    settings: Settings,
    job_id: str,
    source: str,
    model: ResolvedModel,
    chunk_size: int,
    resumed: bool,
    on_progress: ProgressCallback | None,
) -> Submitted:
    """Walk the source, record and send its chunks, close the walk."""
    if resumed:
        log.info("resuming job %s (%s with %s)", job_id, source, model.ref)
        chunk_size = _stored_chunk_size(settings, job_id, chunk_size)
    closed_total = _closed_total(settings, job_id)

    walked = sent = seq = 0
    for batch in _batched(walk(source, settings), chunk_size):
        walked += len(batch)
        _record_walk_problems(settings, job_id, seq, [item for item in batch if item.problem])
        uris = [item.uri for item in batch if not item.problem]
        if uris and _prepare_chunk(settings, job_id, seq, uris, closed=closed_total is not None):
            send_classify_chunk(settings, job_id, model.to_dict(), uris, seq)
            sent += 1
        seq += 1
        if on_progress is not None:
            on_progress(walked, sent)
    if closed_total is not None and walked != closed_total:
        raise _source_changed(job_id, f"it had {closed_total} images, it now has {walked}")
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


def _refuse_if_unfinished_elsewhere(
    settings: Settings, source: str, model: ResolvedModel, explain: str
) -> None:
    """After a crash and an alias move, the same command must not silently start a second job
    and leave the first pending forever."""
    other = unfinished_with_other_version(settings, source, model, explain)
    if other is not None:
        job_id, version = other
        raise PermanentError(
            f"job {job_id} for this source is unfinished with {model.name}@{version}; resume it with "
            f"--model {model.name}@{version} or cancel it with `cxr jobs cancel {job_id}`"
        )


def _closed_total(settings: Settings, job_id: str) -> int | None:
    """The job's total if its walk was already closed (status running), else None."""
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        return job.total if job is not None and job.status == JobStatus.RUNNING else None


def _source_changed(job_id: str, detail: str) -> PermanentError:
    return PermanentError(
        f"the source changed since job {job_id} was submitted ({detail}); wait for it to finish or "
        f"cancel it with `cxr jobs cancel {job_id}`, then score again (what was scored is skipped)"
    )


def _prepare_chunk(
    settings: Settings, job_id: str, seq: int, uris: list[str], *, closed: bool = False
) -> bool:
    """Create or check the chunk row (committed before sending); False if it needs no sending:
    it is final, or a worker holds a live lease on it. Raises ``JobCancelled`` once the job is
    cancelled, and refuses a chunk that differs from the one recorded, or a new chunk in a job
    whose walk was closed (the source grew)."""
    with session_scope(settings) as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        if status in (JobStatus.CANCELLED, JobStatus.FAILED):
            raise JobCancelled(f"job {job_id} was {status.value} during submission; {seq} chunks were sent")
        if not closed:
            row = {"job_id": job_id, "seq": seq, "uris": uris, "status": ChunkStatus.QUEUED}
            if insert_returning(session, Chunk, [row], Chunk.id):
                session.execute(update(Job).where(Job.id == job_id).values(enqueued=Job.enqueued + len(uris)))
                return True
        chunk = session.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq))
        if chunk is None:
            raise _source_changed(job_id, f"it grew: chunk {seq} is new")
        if list(chunk.uris) != uris:
            raise _source_changed(job_id, f"chunk {seq} differs")
        if chunk.status in FINAL_CHUNK:
            return False
        expires = chunk.lease_expires_at
        if chunk.lease_owner and expires is not None:
            expires = expires if expires.tzinfo else expires.replace(tzinfo=dt.UTC)
            return expires < utcnow()  # running under a live lease: its holder will finish it
        return True


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
        finished = job_id in finished_in(session)
    if finished:  # every image of the last chunk failed in the walk
        send_job_report(settings, job_id)


def _close_walk(settings: Settings, job_id: str, total: int) -> None:
    """The walk is complete: the total is known, and the job may already be finished (always,
    without a broker): then its report is asked for here."""
    with session_scope(settings) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.PENDING)
            .values(status=JobStatus.RUNNING, total=total, updated_at=utcnow())
        )
        finished = finish_if_complete(session, job_id)
    if finished:
        send_job_report(settings, job_id)


def cancel(settings: Settings, job_id: str) -> bool:
    """Stop a job: workers skip its remaining chunks, and its report is written as it stands
    (a cancelled job is frozen at its cancel). True if it was still running."""
    cancelled = _cancel(settings, job_id)
    if cancelled:
        send_job_report(settings, job_id)
    return cancelled


def _cancel(settings: Settings, job_id: str) -> bool:
    with session_scope(settings) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(_UNFINISHED))
            .values(
                status=JobStatus.CANCELLED, finished_at=utcnow(), updated_at=utcnow(), active_identity=None
            )
        )
        if result.rowcount:
            return True
        if session.get(Job, job_id) is None:
            raise PermanentError(f"no job {job_id!r}")
        return False
