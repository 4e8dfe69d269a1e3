"""The Celery application: broker, queues, routing and delivery guarantees. No TensorFlow here.

The scheduler imports this module to send tasks *by name* (``app.send_task("cxr.classify_chunk",
...)``), so it stays light: Celery and settings only. The task bodies live in ``worker.tasks``,
which Celery imports in the worker (``include``), and they import the model code lazily.

Delivery guarantees: ``acks_late`` + ``reject_on_worker_lost`` put a chunk back on the queue when
its worker dies; prefetch 1 keeps a worker from hoarding chunks it cannot start; results are
ignored (progress lives in SQL counters); only JSON crosses the broker.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from cxr.core.settings import Settings, get_settings

CLASSIFY_CHUNK = "cxr.classify_chunk"
EXPLAIN_CHUNK = "cxr.explain_chunk"
RETRAIN = "cxr.retrain"
REPORT_JOB = "cxr.report_job"

#: gpu: classification and explanation (one worker process per GPU); train: training runs;
#: default: everything light (bookkeeping, reports).
QUEUES = ("gpu", "train", "default")
ROUTES = {
    CLASSIFY_CHUNK: {"queue": "gpu"},
    EXPLAIN_CHUNK: {"queue": "gpu"},
    RETRAIN: {"queue": "train"},
    REPORT_JOB: {"queue": "default"},
}


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """The retraining entry for ``celery -A worker beat``, from ``CXR_RETRAIN_SCHEDULE``."""
    if not settings.retrain_schedule:
        return {}
    from celery.schedules import crontab

    fields = settings.retrain_schedule.split()
    if len(fields) != 5:
        raise ValueError(
            f"CXR_RETRAIN_SCHEDULE must be a crontab 'minute hour day-of-month month day-of-week', "
            f"got {settings.retrain_schedule!r}"
        )
    minute, hour, day_of_month, month, day_of_week = fields
    schedule = crontab(minute, hour, day_of_week, day_of_month, month)
    return {"retrain": {"task": RETRAIN, "schedule": schedule, "options": {"queue": "train"}}}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration derived from settings (pure data, easy to test)."""
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.broker_key_prefix:
        transport["global_keyprefix"] = settings.broker_key_prefix
    return {
        "broker_url": settings.broker_url or "memory://",
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        # No result backend is configured; the option is set anyway so that one added later
        # inherits the same visibility timeout instead of Redis' one-hour default.
        "result_backend_transport_options": dict(transport),
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": int(settings.task_time_limit_s * 0.9),
        "task_queues": [Queue(name, routing_key=name) for name in QUEUES],
        "task_default_queue": "default",
        "task_routes": ROUTES,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "include": ["worker.tasks"],
        "beat_schedule": beat_schedule(settings),
        "timezone": "UTC",
    }


def make_app(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` (tests build one per run with their own key prefix)."""
    settings = settings or get_settings()
    celery_app = Celery("cxr")
    celery_app.conf.update(celery_config(settings))
    return celery_app


app = make_app()


def send_classify_chunk(
    settings: Settings, job_id: str, model: dict[str, Any], uris: list[str], chunk_seq: int
) -> None:
    """Hand a chunk to a worker through the broker, or score it right here with no broker."""
    if settings.in_process:
        from worker.chunk import run_classify_chunk  # the model code, only when it runs here

        run_classify_chunk(settings, job_id, model, uris, chunk_seq)
        return
    app.send_task(
        CLASSIFY_CHUNK,
        kwargs={"job_id": job_id, "model": model, "uris": uris, "chunk_seq": chunk_seq},
    )


def send_job_report(settings: Settings, job_id: str) -> None:
    """A job has just finished: have its CSV and HTML report written and their URIs recorded on
    it. Through the broker (queue ``default``), or right here with no broker. A report that
    cannot be written is logged, never raised: the job's results stand without it, and
    ``cxr jobs report ID`` writes it later."""
    if settings.in_process:
        import logging

        from cxr.core.outcomes import one_line

        try:
            from scheduler.report import write_report

            write_report(settings, job_id)
        except Exception as exc:
            logging.getLogger(__name__).error("job %s: report not written: %s", job_id, one_line(exc))
        return
    try:
        app.send_task(REPORT_JOB, kwargs={"job_id": job_id})
    except Exception as exc:  # the broker went away between the chunk and now
        import logging

        logging.getLogger(__name__).error(
            "job %s: report task not sent (%s); write it with `cxr jobs report %s`",
            job_id, " ".join(str(exc).split()), job_id,
        )  # fmt: skip


def check_broker(settings: Settings, timeout_s: float = 5.0) -> None:
    """Connect to the broker once, or raise ``TransientError`` naming it (masked)."""
    from cxr.core.errors import TransientError
    from cxr.core.settings import mask_url

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as exc:
        raise TransientError(
            f"cannot reach the broker {mask_url(settings.broker_url or '')}: {' '.join(str(exc).split())}; "
            "nothing was submitted. "
            "Start it (or fix CXR_BROKER_URL) and run the same command again"
        ) from exc


def queued_chunks(settings: Settings) -> int | None:
    """Messages waiting in the ``gpu`` queue, or None if the broker cannot say."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=5)
            channel = connection.default_channel
            size = getattr(channel, "_size", None)  # Redis: LLEN over the queue's priority lists
            if size is not None:
                return int(size("gpu"))
            return int(channel.queue_declare("gpu", passive=True).message_count)
    except Exception:
        return None
