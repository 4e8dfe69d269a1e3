"""Job counters, shared by the scheduler (which submits) and the worker (which scores).

Counters change only through SQL arithmetic (``scored = scored + n``), never read-modify-write,
so any number of workers can count at once. A job is finished by whoever brings the sum of its
counters up to its total, and only once the scheduler has said what the total is (status
``running``): a worker that finishes early chunks while the walk is still going on cannot close
the job.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from cxr.core.db.models import Job, JobStatus, utcnow


def add_to_counters(
    session: Session, job_id: str, *, scored: int = 0, skipped: int = 0, failed: int = 0
) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            scored=Job.scored + scored,
            skipped=Job.skipped + skipped,
            failed=Job.failed + failed,
            updated_at=utcnow(),
        )
    )
    finish_if_complete(session, job_id)


def finish_if_complete(session: Session, job_id: str) -> None:
    session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.scored + Job.skipped + Job.failed >= Job.total,
        )
        .values(status=JobStatus.FINISHED, finished_at=utcnow())
    )
