"""Worker process lifecycle hooks: only cheap things, because Celery kills a child whose
``worker_process_init`` takes longer than a few seconds. Models load lazily on the first task."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from cxr.core.db.session import dispose_engines
from cxr.core.settings import Settings, get_settings
from worker import metrics

log = logging.getLogger(__name__)

#: How many processes of this worker run tasks side by side: set in the parent by
#: ``worker_init`` and inherited by the prefork children through the fork.
_pool_processes = 1

#: The environment variables TensorFlow reads to size its pools when it starts.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def pool_process_index() -> int | None:
    """0-based index of this prefork child (stable across child restarts); None in solo mode."""
    from billiard.process import current_process

    return getattr(current_process(), "index", None)


def pool_processes(pool_cls: Any, concurrency: int | None) -> int:
    """Processes a worker runs tasks in: ``--concurrency`` for prefork, one for solo and threads."""
    name = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    return max(1, concurrency or 1) if "prefork" in str(name).lower() else 1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def inference_threads(settings: Settings, processes: int, cores: int) -> int:
    """TensorFlow threads for one worker process.

    TensorFlow sizes its thread pools to every core of the machine. Two prefork children doing
    that run four compute threads on two cores, and a parallel layer waits for its slowest
    thread, so each preemption stalls the whole layer. One process per core slice avoids it, and
    on the 2-core development machine two single-threaded processes also beat one two-threaded
    process on the bare forward pass (docs/WORKER.md).
    """
    return settings.inference_threads or max(1, cores // processes)


def configure_inference_threads(settings: Settings, processes: int) -> int:
    """Size TensorFlow's thread pools through the environment, read when TensorFlow starts.

    It must run before TensorFlow is imported in this process, which the worker guarantees:
    TensorFlow is imported lazily, on the first model load. Variables already set in the
    environment win, so an operator can still pin them by hand.
    """
    threads = inference_threads(settings, processes, available_cores())
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, str(threads))
    return int(os.environ[THREAD_VARIABLES[0]])


@signals.worker_init.connect
def on_worker_init(sender: Any = None, **_: Any) -> None:
    """In the parent, before the pool forks: remember how many processes will share the cores."""
    global _pool_processes
    _pool_processes = pool_processes(getattr(sender, "pool_cls", None), getattr(sender, "concurrency", 1))
    metrics.start_worker_metrics_server(get_settings().metrics_port)  # multiprocess mode only


@signals.worker_process_init.connect
def on_process_init(**_: Any) -> None:
    """After the fork (or at solo-pool start): drop inherited connections, size TensorFlow's
    threads, serve metrics (one port per process) or ready this process's files (one per worker)."""
    settings = get_settings()
    dispose_engines()
    threads = configure_inference_threads(settings, _pool_processes)
    log.info(
        "inference threads: %d (worker processes: %d, cores: %d)", threads, _pool_processes, available_cores()
    )
    if metrics.MULTIPROCESS_DIR:
        metrics.touch_values()  # the main process serves this child's files
    else:
        metrics.start_metrics_server(settings.metrics_port, pool_process_index())


@signals.worker_process_shutdown.connect
def on_process_shutdown(**_: Any) -> None:
    """A pool child exits: its live gauges leave the multiprocess totals."""
    metrics.process_exited()
