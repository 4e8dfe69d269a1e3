"""Helpers for fault-injection tests: submit a job as a subprocess, watch it in SQL, kill
processes by pid, and check that every image ended with exactly one outcome."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, select

from cxr.core.db.models import Chunk, Job, JobImage, Prediction
from cxr.core.db.session import session_scope
from cxr.core.settings import Settings
from tests import services
from tests import worker_support as support

CXR = [sys.executable, "-m", "cxr.cli.main"]


def submit_job(settings: Settings, cli_dir: Path, source: str, model_ref: str, chunk_size: int) -> str:
    """``cxr score SOURCE --json`` (no wait): returns the job id once every chunk is sent."""
    result = subprocess.run(
        [*CXR, "score", source, "--model", model_ref, "--chunk-size", str(chunk_size), "--json"],
        env=support.worker_env(settings, cli_dir),
        capture_output=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    return json.loads(result.stdout)["job_id"]


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A ``redis-server`` of this test's own on a free port (no persistence); yields its URL.

    Broker faults (a Redis that goes away, that is not there during submission) must not touch
    the shared server other engineers' tests use."""
    binary = shutil.which("redis-server")
    if binary is None:
        services.missing_service("redis-server")
    port = services.free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        support.wait_for(lambda: _pings(client), 20, "the private redis-server")
        yield url
    finally:
        services.stop_process(process)


def _pings(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.exceptions.ConnectionError:
        return False


def chunk_states(settings: Settings, job_id: str) -> dict[int, tuple[str, int]]:
    """chunk seq → (status, deliveries)."""
    with session_scope(settings) as session:
        rows = session.execute(
            select(Chunk.seq, Chunk.status, Chunk.deliveries).where(Chunk.job_id == job_id)
        )
        return {seq: (status.value, deliveries) for seq, status, deliveries in rows}


def model_chunk_state(settings: Settings, model_name: str, seq: int) -> tuple[str, int]:
    """(status, deliveries) of chunk ``seq`` of the job scoring with ``model_name``, before the
    job id is known (a chunk can start while ``cxr score`` is still submitting)."""
    with session_scope(settings) as session:
        row = session.execute(
            select(Chunk.status, Chunk.deliveries)
            .join(Job, Job.id == Chunk.job_id)
            .where(Job.model_name == model_name, Chunk.seq == seq)
        ).first()
    return (row[0].value, row[1]) if row else ("queued", 0)


def model_job_status(settings: Settings, model_name: str) -> str | None:
    """The status of the job scoring with ``model_name`` (None before it exists)."""
    with session_scope(settings) as session:
        status = session.scalar(select(Job.status).where(Job.model_name == model_name))
    return status.value if status is not None else None


def job_status(settings: Settings, job_id: str) -> str:
    with session_scope(settings) as session:
        return session.get(Job, job_id).status.value


def assert_exactly_once(settings: Settings, job_id: str, model_name: str, total: int) -> Job:
    """The job finished, every image has one outcome and every scored image one prediction."""
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job.status.value == "finished", job.status
        assert job.total == total
        assert job.scored + job.skipped + job.failed == total
        outcomes = session.scalar(select(func.count()).select_from(JobImage).where(JobImage.job_id == job_id))
        assert outcomes == total
        per_image = session.execute(
            select(Prediction.image_sha256, func.count())
            .where(Prediction.model_name == model_name)
            .group_by(Prediction.image_sha256)
        ).all()
        assert all(count == 1 for _, count in per_image)
        assert len(per_image) == job.scored
        session.expunge(job)
        return job


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid`` (prefork pool processes), read from /proc."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def kill(pid: int) -> None:
    """SIGKILL one process we started (or a pool child of it), by pid."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def large_png(side: int) -> bytes:
    """A ``side`` × ``side`` gray gradient PNG: small on disk, slow to decode and resize."""
    import io

    import numpy as np
    from PIL import Image

    row = np.linspace(0, 255, side).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.tile(row, (side, 1)), mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_archive(root: Path, count: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> list[bytes]:
    """``count`` distinct synthetic PNGs under ``root``; returns their bytes."""
    root.mkdir(parents=True, exist_ok=True)
    images = [support.synthetic_png(seed + i, size) for i in range(count)]
    for i, data in enumerate(images):
        (root / f"img{i:05d}.png").write_bytes(data)
    return images
