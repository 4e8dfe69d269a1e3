"""A custom Prometheus collector: every scrape reads Redis and SQL afresh, within a time bound.

A collector (rather than a thread refreshing gauges in a loop) means the numbers are as fresh as
the scrape, nothing runs between scrapes, and a slow database slows the scrape instead of
serving stale values silently. Each source is bounded (Redis socket timeouts, a PostgreSQL
``statement_timeout``); a source that fails or times out is reported as
``cxr_exporter_source_up{source} 0`` and its series are left out of that scrape, so alerts see a
gap rather than a misleading zero.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

import redis
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from cxr.core.settings import Settings
from scheduler.exporter import queries
from worker.app import QUEUES

log = logging.getLogger(__name__)

SOURCES = ("redis", "sql")


def bounded_engine(url: str, timeout_s: float) -> Engine:
    """An engine whose connects and statements give up after ``timeout_s`` seconds."""
    seconds = max(1, round(timeout_s))
    if make_url(url).get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": seconds, "options": f"-c statement_timeout={seconds * 1000}"}
    else:  # SQLite: a locked file waits at most this long
        connect_args = {"timeout": seconds}
    return create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=1, connect_args=connect_args)


def bounded_redis(url: str, timeout_s: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


class ClusterCollector(Collector):
    """Queue depths from Redis; jobs, pending images, training runs, model versions, prediction
    counts and shortcut scores from SQL."""

    def __init__(
        self,
        settings: Settings,
        queues: Sequence[str] = QUEUES,
        timeout_s: float = 5.0,
    ) -> None:
        assert settings.database_url is not None  # filled by Settings
        self.queues = tuple(queues)
        self.prefix = settings.broker_key_prefix
        self.redis = bounded_redis(settings.broker_url, timeout_s) if settings.broker_url else None
        self.engine = bounded_engine(settings.database_url, timeout_s)

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so registering reads neither Redis nor SQL."""
        yield from self._source_families({})
        yield from self._redis_families({})
        yield from self._sql_families(None)

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up: dict[str, bool] = {}
        depths: dict[str, int] = {}
        snapshot: queries.SqlSnapshot | None = None
        if self.redis is not None:
            try:
                depths = queries.queue_depths(self.redis, self.prefix, self.queues)
                up["redis"] = True
            except redis.RedisError as exc:
                log.error("cannot read queue depths from Redis: %s", exc)
                up["redis"] = False
        try:
            with self.engine.connect() as connection:
                snapshot = queries.read_sql(connection)
            up["sql"] = True
        except SQLAlchemyError as exc:  # a database error costs one scrape, not the exporter
            log.error("cannot read cluster state from SQL: %s", exc)
            up["sql"] = False
        yield from self._source_families(up)
        yield from self._redis_families(depths)
        yield from self._sql_families(snapshot)
        duration = GaugeMetricFamily(
            "cxr_exporter_scrape_duration_seconds", "Time the last scrape spent reading Redis and SQL."
        )
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    def _source_families(self, up: dict[str, bool]) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "cxr_exporter_source_up",
            "1 if the last scrape could read this source (redis, sql); a source with no broker "
            "configured is not listed.",
            labels=["source"],
        )
        for source, ok in up.items():
            family.add_metric([source], 1.0 if ok else 0.0)
        yield family

    def _redis_families(self, depths: dict[str, int]) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "cxr_queue_depth",
            "Messages waiting in a Celery queue (Redis list length, all priorities).",
            labels=["queue"],
        )
        for queue, depth in depths.items():
            family.add_metric([queue], depth)
        yield family

    def _sql_families(self, snap: queries.SqlSnapshot | None) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("cxr_jobs", "Scoring jobs per status.", labels=["status"])
        pending = GaugeMetricFamily(
            "cxr_images_pending", "Images of running jobs not yet scored, skipped or failed."
        )
        runs = GaugeMetricFamily("cxr_training_runs", "Training runs per status.", labels=["status"])
        versions = GaugeMetricFamily(
            "cxr_model_versions", "Published versions per model (the SQL catalogue).", labels=["model"]
        )
        predictions = GaugeMetricFamily(
            "cxr_predictions",
            "Classifications stored in SQL per model, version and predicted label (label share, drift).",
            labels=["model", "version", "label"],
        )
        flagged = GaugeMetricFamily(
            "cxr_predictions_out_of_distribution",
            "Stored classifications flagged as unlike the model's training data (shift score beyond "
            "its threshold percentile), per model version.",
            labels=["model", "version"],
        )
        decisions = GaugeMetricFamily(
            "cxr_promotion_decisions",
            "Promotion-gate decisions per model: decision=promoted (the alias moved) or kept.",
            labels=["model", "decision"],
        )
        if snap is not None:
            # Zeros, not gaps: every catalogued model has both decisions, every version with
            # stored predictions has a flagged count, so shares and panels read 0 instead of nothing.
            for (model, decision), count in _decisions_with_zeros(snap).items():
                decisions.add_metric([model, decision], count)
            for status, count in snap.jobs_by_status.items():
                jobs.add_metric([status], count)
            pending.add_metric([], snap.images_pending)
            for status, count in snap.training_runs_by_status.items():
                runs.add_metric([status], count)
            for model, count in snap.model_versions.items():
                versions.add_metric([model], count)
            for labels, count in snap.predictions.items():
                predictions.add_metric(list(labels), count)
            scored_versions = {(model, version): 0 for model, version, _ in snap.predictions}
            for labels, count in (scored_versions | snap.out_of_distribution).items():
                flagged.add_metric(list(labels), count)
        yield from (jobs, pending, runs, versions, predictions, flagged, decisions)
        yield self._shortcut_family(snap.shortcut_scores if snap else None)

    @staticmethod
    def _shortcut_family(scores: queries.ShortcutScores | None) -> Metric:
        family = HistogramMetricFamily(
            "cxr_shortcut_score",
            "Distribution of the shortcut score of explained images: the share of heatmap energy "
            "outside the lung mask (models with a lung step) or else outside the central chest "
            "box, from the overlay artifacts' params.",
        )
        if scores is not None:
            buckets = [(_le(le), count) for le, count in scores.buckets.items()]
            buckets.append(("+Inf", scores.count))
            family.add_metric([], buckets, sum_value=scores.total)
        return family


def _decisions_with_zeros(snap: queries.SqlSnapshot) -> dict[tuple[str, str], int]:
    zeros = {(model, decision): 0 for model in snap.model_versions for decision in ("promoted", "kept")}
    return zeros | snap.promotion_decisions


def _le(bound: float) -> str:
    return repr(float(bound))


def make_registry(settings: Settings, timeout_s: float = 5.0) -> tuple[CollectorRegistry, ClusterCollector]:
    """The exporter's one registry: the cluster collector and the process's own memory and CPU."""
    registry = CollectorRegistry()
    collector = ClusterCollector(settings, timeout_s=timeout_s)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry, collector
