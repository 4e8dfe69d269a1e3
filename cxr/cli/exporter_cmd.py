"""``cxr exporter``: serve cluster state (queues, jobs, predictions) to Prometheus."""

from __future__ import annotations

import click

from cxr.cli.common import handle_errors


@click.command()
@click.option("--port", type=int, default=None, help="Port to serve on (default: CXR_EXPORTER_PORT).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option(
    "--timeout", "timeout_s", type=float, default=5.0, show_default=True,
    help="Seconds each scrape may spend on Redis and on SQL before the source is reported down.",
)  # fmt: skip
@handle_errors
def exporter(port: int | None, host: str, timeout_s: float) -> None:
    """Serve /metrics (queue depths, jobs, pending images, label shares) and /healthz."""
    from cxr.core.settings import get_settings
    from scheduler.exporter import make_registry, serve

    settings = get_settings()
    registry, collector = make_registry(settings, timeout_s=timeout_s)
    serve(registry, collector, port or settings.exporter_port, host)
