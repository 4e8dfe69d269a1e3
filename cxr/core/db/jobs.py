"""Job counters, shared by the scheduler (which submits) and the worker (which scores).

Counters change only through SQL arithmetic (``scored = scored + n``), never read-modify-write,
so any number of workers can count at once. A job is finished by whoever brings the sum of its
counters up to its total, and only once the scheduler has said what the total is (status
``running``): a worker that finishes early chunks while the walk is still going on cannot close
the job.

A job is finished only when, besides the counters, every one of its chunk rows is final: a
counter sum that reaches the total early (a source that grew, a miscount) cannot close a job
whose last chunk is still being written.

The transaction that finishes a job notes it in ``session.info`` (``finished_in``): after it
commits, its caller asks for the job's report (``worker.app.send_job_report``), so a job ends
with its paperwork done whether a worker or the scheduler closed it.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import exists, update
from sqlalchemy.orm import Session

from cxr.core.db.models import Chunk, ChunkStatus, Job, JobStatus, utcnow

FINAL_CHUNK = (ChunkStatus.DONE, ChunkStatus.FAILED)
_FINISHED_KEY = "cxr_finished_jobs"


def job_identity(source: str, model_name: str, model_version: int, explain: str) -> str:
    """What makes two submissions the same job (kept in ``jobs.active_identity`` while the job
    is unfinished; the 0006 migration computes it the same way)."""
    text = "\x1f".join([source, model_name, str(model_version), explain])
    return hashlib.sha256(text.encode()).hexdigest()


def add_to_counters(
    session: Session, job_id: str, *, scored: int = 0, skipped: int = 0, failed: int = 0
) -> bool:
    """Add to the job's counters; False (nothing added) if the job is no longer pending or
    running. The condition is evaluated under the job row's lock, after any concurrent cancel
    commits, so a caller that rolls back on False can never add results to a cancelled job: a
    cancel freezes the job, and the report written at cancel time stays exact."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_((JobStatus.PENDING, JobStatus.RUNNING)))
        .values(
            scored=Job.scored + scored,
            skipped=Job.skipped + skipped,
            failed=Job.failed + failed,
            updated_at=utcnow(),
        )
    )
    finish_if_complete(session, job_id)
    return bool(result.rowcount)


def finish_if_complete(session: Session, job_id: str) -> bool:
    """Finish the job if its walk is closed, its counters reach the total and every chunk is
    final; True if this call finished it (noted for ``finished_in``)."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.scored + Job.skipped + Job.failed >= Job.total,
            ~exists().where(Chunk.job_id == job_id, Chunk.status.not_in(FINAL_CHUNK)),
        )
        .values(status=JobStatus.FINISHED, finished_at=utcnow(), active_identity=None)
    )
    finished = bool(result.rowcount)
    if finished:
        session.info.setdefault(_FINISHED_KEY, set()).add(job_id)
    return finished


def finished_in(session: Session) -> set[str]:
    """The jobs this session's transactions finished (read it before or after the commit; a
    rolled-back transaction must not be asked)."""
    return set(session.info.get(_FINISHED_KEY, ()))
