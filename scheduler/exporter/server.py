"""The exporter's HTTP endpoint: ``/metrics`` for Prometheus and ``/healthz`` for orchestrators.

``/healthz`` does a real round trip to each dependency (Redis ``PING``, SQL ``SELECT 1``) and
answers 503 naming the one that failed, so a liveness or readiness probe notices a broken
database connection, not merely a live process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import make_wsgi_app
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from scheduler.exporter.collector import ClusterCollector

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


def health(collector: ClusterCollector) -> dict[str, str]:
    """``ok`` or the error per dependency, from one real round trip each."""
    status: dict[str, str] = {}
    if collector.redis is not None:
        try:
            collector.redis.ping()
            status["redis"] = "ok"
        except redis.RedisError as exc:  # reported, not raised: the probe must answer
            status["redis"] = f"{type(exc).__name__}: {exc}"
    try:
        with collector.engine.connect() as connection:
            connection.execute(text("SELECT 1")).scalar_one()
        status["sql"] = "ok"
    except SQLAlchemyError as exc:
        status["sql"] = f"{type(exc).__name__}: {exc}"
    return status


def make_app(registry: Any, collector: ClusterCollector) -> Callable[[dict, StartResponse], Iterable[bytes]]:
    """A WSGI app: ``/healthz`` answered here, everything else by prometheus_client."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)
        status = health(collector)
        healthy = all(value == "ok" for value in status.values())
        code = "200 OK" if healthy else "503 Service Unavailable"
        start_response(code, [("Content-Type", "application/json")])
        return [json.dumps(status).encode()]

    return app


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scrape never blocks a health probe."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


def serve(registry: Any, collector: ClusterCollector, port: int, host: str = "0.0.0.0") -> None:
    """Serve until interrupted."""
    server = make_server(host, port, make_app(registry, collector), _ThreadingWSGIServer, _QuietHandler)
    log.info("cxr exporter serving /metrics and /healthz on %s:%d", host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
