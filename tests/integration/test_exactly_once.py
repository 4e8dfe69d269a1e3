"""Exactly-once *accounting* under concurrency (issue 22): duplicate deliveries are not deaths,
identical submissions share one job, identical bytes are scored once across parallel chunks.

Real worker processes, PostgreSQL and Redis (a private ``redis-server`` where the test races
schedulers), the S3 server as the store.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from sqlalchemy import func, select

from cxr.core.db.models import Chunk, Job, JobImage, Prediction
from cxr.core.db.session import session_scope
from tests import fault_support as faults
from tests import services
from tests import worker_support as support
from tests.integration.test_scheduler_celery import publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _score(settings, cli_dir, source: str, ref: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*faults.CXR, "score", source, "--model", ref, *extra, "--json"],
        env=support.worker_env(settings, cli_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _json(process: subprocess.Popen, timeout: float = 180) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return json.loads(out)


def test_four_submissions_before_any_worker_then_concurrency_4_fail_nothing(cluster_settings, tmp_path):
    """The issue's case: ``cxr score`` four times while no worker runs (every resume re-sends
    every queued chunk), then one prefork worker with four processes. One chunk of 100, four
    copies: the four processes start them at the same moment. On the code before leases this
    failed all 100 images with "worker died 3 times on this chunk"; now the copies find the
    chunk leased or done: duplicates, never deaths."""
    settings = cluster_settings
    publish(settings, tmp_path, "dup4")
    faults.write_archive(tmp_path / "archive", 100, size=(48, 48), seed=4000)
    results = [
        _json(_score(settings, tmp_path / "cli", str(tmp_path / "archive"), "dup4@production",
                     "--chunk-size", "100"))
        for _ in range(4)
    ]  # fmt: skip
    # Queued chunks are re-sent on every resume (the broker may have lost them): 4 messages.
    assert [r["chunks_sent"] for r in results] == [1, 1, 1, 1]
    assert [r["resumed"] for r in results] == [False, True, True, True]
    (job_id,) = {r["job_id"] for r in results}
    log_path = tmp_path / "worker.log"
    worker = support.start_worker(settings, tmp_path / "worker", log_path, pool="prefork", concurrency=4)
    try:
        support.wait_for(lambda: faults.job_status(settings, job_id) == "finished", 240, "the job", worker,
                         log_path)  # fmt: skip
        time.sleep(1)  # the last copies drain (each a lookup)
    finally:
        services.stop_process(worker)
    job = faults.assert_exactly_once(settings, job_id, "dup4", 100)
    assert (job.scored, job.skipped, job.failed) == (100, 0, 0)
    states = faults.chunk_states(settings, job_id)
    assert all(status == "done" for status, _ in states.values())
    with session_scope(settings) as session:
        counts = session.execute(select(Chunk.deliveries, Chunk.deaths).where(Chunk.job_id == job_id)).all()
    assert all(deaths == 0 for _, deaths in counts)
    assert all(deliveries == 1 for deliveries, _ in counts)  # the 3 copies never started it
    log = log_path.read_text(errors="replace")
    assert "worker died" not in log
    assert "(a duplicate delivery)" in log  # copies did arrive while the chunk ran


def test_two_identical_cxr_score_at_the_same_moment_share_one_job(cluster_settings, tmp_path):
    """Two ``cxr score --wait`` started together (private Redis, PostgreSQL): the unique index
    on the unfinished job's identity lets one create the job; the other resumes it. Both print
    the same job's summary, and the counts add up once."""
    with faults.private_redis(tmp_path / "redis") as broker:
        settings = cluster_settings.model_copy(update={"broker_url": broker})
        publish(settings, tmp_path, "race")
        faults.write_archive(tmp_path / "archive", 60, size=(48, 48), seed=5000)
        log_path = tmp_path / "worker.log"
        worker = support.start_worker(settings, tmp_path / "worker", log_path)
        try:
            support.wait_for(lambda: support.worker_ready(log_path), 90, "worker ready", worker, log_path)
            args = (str(tmp_path / "archive"), "race@production", "--chunk-size", "5", "--wait")
            first = _score(settings, tmp_path / "cli-a", *args)
            second = _score(settings, tmp_path / "cli-b", *args)
            a, b = _json(first), _json(second)
        finally:
            services.stop_process(worker)
    assert a["job_id"] == b["job_id"]
    for summary in (a, b):
        assert (summary["status"], summary["total"], summary["scored"], summary["failed"]) == (
            "finished", 60, 60, 0,
        )  # fmt: skip
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
    faults.assert_exactly_once(settings, a["job_id"], "race", 60)


def test_identical_bytes_in_chunks_running_at_once_are_scored_once(cluster_settings, tmp_path):
    """Chunk 0 and chunk 1 hold the same 12 images under other names and run at the same time on
    two pool processes: each image is scored by the first chunk to commit it, skipped by the
    other, across the job and then across a second job of another folder with the same bytes."""
    settings = cluster_settings
    publish(settings, tmp_path, "twins")
    images = [support.synthetic_png(6000 + i, (48, 48)) for i in range(12)]
    for folder in ("archive", "copy"):
        for prefix in ("a", "b"):
            root = tmp_path / folder
            root.mkdir(exist_ok=True)
            for i, data in enumerate(images):
                (root / f"{prefix}{i:02d}.png").write_bytes(data)
    log_path = tmp_path / "worker.log"
    worker = support.start_worker(settings, tmp_path / "worker", log_path, pool="prefork", concurrency=2)
    try:
        support.wait_for(lambda: support.worker_ready(log_path), 90, "worker ready", worker, log_path)
        first = _json(_score(settings, tmp_path / "cli", str(tmp_path / "archive"), "twins@production",
                             "--chunk-size", "12", "--wait"))  # fmt: skip
        second = _json(_score(settings, tmp_path / "cli", str(tmp_path / "copy"), "twins@production",
                              "--chunk-size", "12", "--wait"))  # fmt: skip
    finally:
        services.stop_process(worker)
    assert (first["total"], first["scored"], first["skipped"], first["failed"]) == (24, 12, 12, 0)
    assert (second["total"], second["scored"], second["skipped"], second["failed"]) == (24, 0, 24, 0)
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 12
        reasons = set(session.scalars(select(JobImage.reason).where(JobImage.outcome == "skipped")))
    assert reasons <= {"already scored by this model version", "same bytes as another image of this chunk"}
