"""Queue depths read from a real Redis, under kombu's global key prefix, as Celery writes them."""

from __future__ import annotations

import secrets

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cxr.core.db.migrate import upgrade
from cxr.core.db.session import dispose_engines
from scheduler.exporter import make_registry
from scheduler.exporter.server import health
from tests import services
from worker.app import make_app

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(local_settings, redis_url):
    prefix = f"cxr-test-{services.RUN_ID}-{secrets.token_hex(3)}:"
    settings = local_settings.model_copy(update={"broker_url": redis_url, "broker_key_prefix": prefix})
    upgrade(settings=settings)
    yield settings
    dispose_engines()
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


def test_queue_depth_counts_prefixed_and_priority_lists(settings):
    app = make_app(settings)
    for _ in range(3):
        app.send_task("cxr.classify_chunk", kwargs={}, queue="gpu")
    app.send_task("cxr.anything", kwargs={}, queue="default", priority=5)  # a priority list of its own
    client = redis.Redis.from_url(settings.broker_url)
    assert client.llen(f"{settings.broker_key_prefix}gpu") == 3  # the key layout the exporter reads

    registry, collector = make_registry(settings)
    text = generate_latest(registry).decode()
    depths = {
        s.labels["queue"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "cxr_queue_depth"
    }
    assert depths == {"gpu": 3, "train": 0, "default": 1}
    assert health(collector) == {"redis": "ok", "sql": "ok"}
    app.close()
