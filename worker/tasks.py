"""Celery tasks. Thin: they unpack JSON arguments, call the plain functions, and retry transient
errors with exponential backoff and jitter. Every heavy import happens on first use."""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError

import worker.lifecycle  # noqa: F401  (connects the worker-process signal handlers)
from cxr.core.errors import StorageUnavailable, TransientError
from cxr.core.outcomes import FailureStage, one_line
from cxr.core.settings import Settings, get_settings
from modelstore import ResolvedModel
from worker.app import CLASSIFY_CHUNK, EXPLAIN_CHUNK, REPORT_JOB, RETRAIN, app
from worker.chunk import run_classify_chunk, run_explain_chunk
from worker.results import give_up_chunk

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Storage or database unreachable: worth retrying later."""
    if isinstance(exc, TransientError | OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_delay(retries: int, settings: Settings) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    delay = min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2**retries)
    return delay / 2 + random.uniform(0, delay / 2)


@app.task(name=CLASSIFY_CHUNK, bind=True, max_retries=None)
def classify_chunk(self: Task, job_id: str, model: dict[str, Any], uris: list[str], chunk_seq: int) -> dict:
    """Score one chunk of image URIs with the pinned model and record the results in SQL."""
    settings = get_settings()
    retries = int(self.request.retries or 0)
    spec = ResolvedModel.from_dict(model)
    try:
        report = run_classify_chunk(settings, job_id, model, uris, chunk_seq, attempt=retries)
    except SoftTimeLimitExceeded:
        reason = f"chunk exceeded 90% of its {settings.task_time_limit_s} s limit"
        give_up_chunk(settings, spec, job_id, chunk_seq, uris, FailureStage.TIMEOUT, reason)
        raise
    except Exception as exc:
        if not is_transient(exc):
            # A bug or an unexpected library error: account for the images, so the job can
            # still finish, and let Celery record the task as failed with the traceback.
            reason = f"unexpected error: {one_line(exc)}"
            give_up_chunk(settings, spec, job_id, chunk_seq, uris, FailureStage.WORKER, reason)
            raise
        if retries >= settings.task_max_retries:
            stage = FailureStage.FETCH if isinstance(exc, StorageUnavailable) else FailureStage.WRITE
            reason = f"gave up after {retries} retries: {one_line(exc)}"
            give_up_chunk(settings, spec, job_id, chunk_seq, uris, stage, reason)
            raise
        delay = retry_delay(retries, settings)
        log.warning("chunk %s/%d: %s; retry %d in %.1f s", job_id, chunk_seq, exc, retries + 1, delay)
        raise self.retry(exc=exc, countdown=delay) from exc
    if report.status == "duplicate":
        # Another worker holds a live lease on this chunk. Nothing is counted; this copy comes
        # back when that lease would run out, so a holder that dies meanwhile still has its
        # chunk taken over (and the copy is a no-op if the holder finishes).
        classify_chunk.apply_async(
            kwargs={"job_id": job_id, "model": model, "uris": uris, "chunk_seq": chunk_seq},
            countdown=report.retry_in,
        )
    return report.as_dict()


@app.task(name=EXPLAIN_CHUNK, bind=True, max_retries=None)
def explain_chunk(
    self: Task, job_id: str | None, model: dict[str, Any], uris: list[str], method: str = "gradcam"
) -> dict:
    """Explain images with the pinned model: heatmaps, overlays and ROIs to object storage,
    artifact rows to SQL. Jobs that ask for explanations get them inside ``classify_chunk``;
    this task explains any list of images on demand, batched the same way."""
    settings = get_settings()
    retries = int(self.request.retries or 0)
    try:
        explained = run_explain_chunk(settings, job_id, model, uris, method)
    except Exception as exc:
        if not is_transient(exc) or retries >= settings.task_max_retries:
            raise
        raise self.retry(exc=exc, countdown=retry_delay(retries, settings)) from exc
    return {"explained": explained, "images": len(uris)}


@app.task(name=REPORT_JOB, bind=True, max_retries=None)
def report_job(self: Task, job_id: str) -> dict:
    """A finished job's paperwork (queue ``default``): the per-image CSV and the HTML report to
    object storage, their URIs on the job. Idempotent: a redelivery rewrites the same objects."""
    from scheduler.report import write_report

    settings = get_settings()
    retries = int(self.request.retries or 0)
    try:
        files = write_report(settings, job_id)
    except Exception as exc:
        if not is_transient(exc) or retries >= settings.task_max_retries:
            log.error("job %s: report not written: %s", job_id, one_line(exc))
            raise
        raise self.retry(exc=exc, countdown=retry_delay(retries, settings)) from exc
    return {"job_id": job_id, "html": files["html"], "csv": files["csv"]}


@app.task(name=RETRAIN, acks_late=False)
def retrain() -> dict:
    """Scheduled retraining (queue ``train``): train, publish, then the promotion gate.

    Not ``acks_late``: a training run that dies is not worth replaying automatically hours
    later; the next scheduled run starts fresh, and the failed run is recorded as such.
    """
    from scheduler.retraining import retrain as run_retraining

    return run_retraining(get_settings()).as_dict()
