"""Worker process lifecycle hooks: only cheap things, because Celery kills a child whose
``worker_process_init`` takes longer than a few seconds. Models load lazily on the first task."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from cxr.core.db.session import dispose_engines
from cxr.core.settings import get_settings
from worker.metrics import start_metrics_server

log = logging.getLogger(__name__)


def pool_process_index() -> int | None:
    """0-based index of this prefork child (stable across child restarts); None in solo mode."""
    from billiard.process import current_process

    return getattr(current_process(), "index", None)


@signals.worker_process_init.connect
def on_process_init(**_: Any) -> None:
    """After the fork (or at solo-pool start): drop inherited connections, serve metrics."""
    dispose_engines()
    start_metrics_server(get_settings().metrics_port, pool_process_index())
