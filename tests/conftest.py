"""Shared fixtures. Service fixtures live in ``tests/services.py``."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of test logs

import pytest

from cxr.core.settings import Settings
from tests import services


@pytest.fixture
def local_settings(tmp_path) -> Settings:
    """Embedded defaults (SQLite + local object store) under a fresh data dir."""
    return Settings(data_dir=tmp_path / "cxr-data")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[services.S3Server]:
    workdir = services.scratch_dir("s3")
    server = services.start_s3_server(workdir)
    try:
        yield server
    finally:
        services.stop_process(server.process)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def s3_settings(s3_server, tmp_path) -> Settings:
    """Settings whose object store is a fresh bucket on the test S3 server."""
    from cxr.core.storage.s3 import S3Store, make_s3_client

    bucket = f"cxr-test-{services.RUN_ID}-{secrets.token_hex(3)}"
    settings = Settings(
        data_dir=tmp_path / "cxr-data",
        storage_url=f"s3://{bucket}/store",
        s3_endpoint_url=s3_server.endpoint,
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=s3_server.secret_key,
        s3_max_attempts=2,
    )
    S3Store(bucket, "", make_s3_client(settings)).ensure_bucket()
    return settings


@pytest.fixture(scope="session")
def redis_url() -> str:
    return services.check_redis()
