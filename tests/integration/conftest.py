"""Fixtures for tests against the whole cluster: PostgreSQL, Redis, the S3 server, a worker."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr.core.db.migrate import upgrade
from cxr.core.db.session import dispose_engines
from cxr.core.settings import Settings
from tests import services
from tests import worker_support as support


@pytest.fixture
def cluster_settings(s3_settings: Settings, redis_url: str, tmp_path: Path) -> Iterator[Settings]:
    """S3 bucket, PostgreSQL database and Redis key prefix of this test's own: counts and series
    read back after a job are this test's alone, whatever ran before it."""
    database_url = services.create_pg_database()
    settings = s3_settings.model_copy(
        update={
            "database_url": database_url,
            "broker_url": redis_url,
            "broker_key_prefix": f"cxr-test-{services.RUN_ID}-{secrets.token_hex(3)}:",
            "metrics_port": services.free_port(),
            "inference_batch_size": 4,
            "model_cache_dir": tmp_path / "test-model-cache",
        }
    )
    upgrade(settings=settings)
    yield settings
    dispose_engines()
    services.drop_pg_database(database_url)
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{settings.broker_key_prefix}*"):
        client.delete(key)


@pytest.fixture
def celery_worker(cluster_settings: Settings, tmp_path: Path) -> Iterator[Path]:
    """``celery -A worker worker -Q gpu -P solo`` as a subprocess; yields its log file."""
    log_path = tmp_path / "worker.log"
    process = support.start_worker(cluster_settings, tmp_path / "worker-data", log_path)
    try:
        support.wait_for(lambda: support.worker_ready(log_path), 90, "worker ready", process, log_path)
        yield log_path
    finally:
        services.stop_process(process)
