"""Faults injected into a running job on the real cluster; the job must still end with every
image accounted for exactly once.

Settings chosen so that recovery fits in a test (and documented in docs/RELIABILITY.md):
``task_time_limit_s=10`` (the minimum) makes the Redis visibility timeout 40 s; retries use a
1 s first backoff capped at 4 s so that a 20 s outage is bridged by a handful of retries.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy import select

from cxr.core.db.models import Failure
from cxr.core.db.session import session_scope
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from cxr.core.storage.s3 import S3Store, make_s3_client
from tests import fault_support as faults
from tests import services
from tests import worker_support as support
from tests.badinput import _png_claiming
from tests.integration.test_scheduler_celery import cxr, finish, publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_RETRIES = {"task_max_retries": 20, "retry_backoff_s": 1.0, "retry_backoff_max_s": 4.0}


class Workers:
    """Worker processes started by one test, each with its own log; all stopped at the end."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings, self.tmp_path = settings, tmp_path
        self.started: list = []

    def start(self, *, prefork: bool = False) -> tuple[object, Path]:
        n = len(self.started)
        log_path = self.tmp_path / f"worker-{n}.log"
        process = support.start_worker(
            self.settings, self.tmp_path / f"worker-{n}", log_path, pool="prefork" if prefork else "solo"
        )
        self.started.append(process)
        support.wait_for(lambda: support.worker_ready(log_path), 90, "worker ready", process, log_path)
        return process, log_path

    def stop(self) -> None:
        for process in self.started:
            services.stop_process(process)


def _wait_finished(settings: Settings, job_id: str, timeout: float) -> None:
    support.wait_for(
        lambda: faults.job_status(settings, job_id) == "finished", timeout, f"job {job_id} to finish"
    )


def test_a_worker_killed_mid_chunk_loses_nothing(cluster_settings, tmp_path):
    settings = cluster_settings.model_copy(update={"task_time_limit_s": 10})  # visibility 40 s
    workers = Workers(settings, tmp_path)
    try:
        publish(settings, tmp_path, "kill9")
        faults.write_archive(tmp_path / "archive", 240, size=(96, 96))
        first, _ = workers.start()
        job_id = faults.submit_job(
            settings, tmp_path / "cli", str(tmp_path / "archive"), "kill9@production", 60
        )

        def running() -> list[int]:
            return [
                seq
                for seq, (status, _) in faults.chunk_states(settings, job_id).items()
                if status == "running"
            ]

        support.wait_for(lambda: bool(running()), 60, "a chunk to start")
        faults.kill(first.pid)  # SIGKILL: no ack, no cleanup
        first.wait(10)
        interrupted = running()
        assert interrupted, "the kill must land while a chunk runs"
        workers.start()  # takes the queued chunks at once, the unacked one after the visibility timeout
        _wait_finished(settings, job_id, 120)
    finally:
        workers.stop()
    job = faults.assert_exactly_once(settings, job_id, "kill9", 240)
    assert (job.scored, job.failed) == (240, 0)
    states = faults.chunk_states(settings, job_id)
    assert all(states[seq][1] == 2 for seq in interrupted)  # started twice, counted once


def test_the_object_store_down_for_20_seconds_is_ridden_out(cluster_settings, tmp_path):
    workdir = services.scratch_dir("s3-restart")
    server = services.start_s3_server(workdir)
    bucket = "cxr-outage"
    settings = cluster_settings.model_copy(
        update={
            "storage_url": f"s3://{bucket}/store",
            "s3_endpoint_url": server.endpoint,
            "s3_access_key_id": SecretStr(server.access_key),
            "s3_secret_access_key": SecretStr(server.secret_key),
            "s3_max_attempts": 2,
            **FAST_RETRIES,
        }
    )
    workers = Workers(settings, tmp_path)
    try:
        S3Store(bucket, "", make_s3_client(settings)).ensure_bucket()
        publish(settings, tmp_path, "outage")
        store = open_store(f"s3://{bucket}", settings)
        for i in range(120):
            store.put(f"archive/img{i:04d}.png", support.synthetic_png(500 + i, (64, 64)))
        _, log_path = workers.start()
        job_id = faults.submit_job(
            settings, tmp_path / "cli", f"s3://{bucket}/archive", "outage@production", 2
        )
        done = lambda: sum(s == "done" for s, _ in faults.chunk_states(settings, job_id).values())  # noqa: E731
        support.wait_for(lambda: done() >= 3, 60, "the first chunks")
        services.stop_process(server.process)  # the store goes away mid-job...
        time.sleep(20)
        during = done()
        server = services.start_s3_server(workdir, restart=server)  # ...and comes back
        _wait_finished(settings, job_id, 120)
    finally:
        workers.stop()
        services.stop_process(server.process)
        shutil.rmtree(workdir, ignore_errors=True)
    job = faults.assert_exactly_once(settings, job_id, "outage", 120)
    assert (job.scored, job.failed) == (120, 0)
    assert during < 60, "the outage must have hit the job"
    assert "retry" in log_path.read_text(errors="replace")


def _terminate_connections(database: str) -> int:
    engine = sa.create_engine(services.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            return len(
                connection.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": database},
                ).all()
            )
    finally:
        engine.dispose()


def test_database_connections_killed_mid_job_lose_and_double_nothing(cluster_settings, tmp_path):
    """Every connection to the job's database is terminated every half second, the worker's
    and the waiting ``cxr score --wait``'s alike, from the end of submission to the end."""
    settings = cluster_settings.model_copy(update=FAST_RETRIES)
    workers = Workers(settings, tmp_path)
    try:
        publish(settings, tmp_path, "pgkill")
        faults.write_archive(tmp_path / "archive", 120, seed=900)
        workers.start()
        waiting = cxr(settings, tmp_path / "cli", "score", str(tmp_path / "archive"), "--model",
                      "pgkill@production", "--chunk-size", "2", "--wait", "--json")  # fmt: skip
        support.wait_for(lambda: faults.model_job_status(settings, "pgkill") == "running", 60, "submission")
        database = settings.database_url.rsplit("/", 1)[1]
        hits = 0
        while waiting.poll() is None and faults.model_job_status(settings, "pgkill") != "finished":
            hits += _terminate_connections(database) > 0
            time.sleep(0.5)
        summary = finish(waiting, timeout=120)
    finally:
        workers.stop()
    assert hits >= 2, "the connections must have been killed mid-job"
    assert (summary["status"], summary["scored"], summary["failed"]) == ("finished", 120, 0)
    faults.assert_exactly_once(settings, summary["job_id"], "pgkill", 120)


def test_a_chunk_that_kills_its_worker_is_given_up_after_max_deliveries(cluster_settings, tmp_path):
    """No decoder here can crash on demand, so the poison is simulated: the pool process is
    SIGKILLed each time it starts chunk 0. Prefork requeues a chunk whose child died at once, and
    each fresh child spends seconds loading the model after counting the delivery: the window in
    which the kill lands."""
    settings = cluster_settings.model_copy(update={"max_deliveries": 2})
    workers = Workers(settings, tmp_path)
    poison_seq = 0
    stop = threading.Event()
    try:
        publish(settings, tmp_path, "poison")
        faults.write_archive(tmp_path / "archive", 15, seed=700)
        (tmp_path / "archive" / "img00007.png").write_bytes(_png_claiming(50_000, 50_000))  # refused fast
        # A large but legal radiograph in chunk 0 keeps each start of it busy for a while after
        # it counted its delivery, so the simulated crash lands inside the chunk every time.
        (tmp_path / "archive" / "img00002.png").write_bytes(faults.large_png(6000))
        parent, _log_path = workers.start(prefork=True)

        def killer() -> None:  # watches the chunk from before submission: it can run at once
            killed = 0
            while not stop.is_set() and killed < settings.max_deliveries:
                status, deliveries = faults.model_chunk_state(settings, "poison", poison_seq)
                if status == "running" and deliveries > killed:
                    for child in faults.children_of(parent.pid):
                        faults.kill(child)
                    killed = deliveries
                time.sleep(0.02)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        job_id = faults.submit_job(
            settings, tmp_path / "cli", str(tmp_path / "archive"), "poison@production", 5
        )
        _wait_finished(settings, job_id, 150)
        survived = parent.poll() is None  # the worker itself; only its pool processes died
    finally:
        stop.set()
        workers.stop()
    job = faults.assert_exactly_once(settings, job_id, "poison", 15)
    assert (job.scored, job.failed) == (9, 6)  # chunk 0's five images, and the bomb in chunk 1
    with session_scope(settings) as session:
        reasons = {
            f.image_uri.rsplit("/", 1)[-1]: (f.stage, f.reason) for f in session.scalars(select(Failure))
        }
    assert reasons["img00007.png"][0] == "decode" and "decompression bomb" in reasons["img00007.png"][1]
    for i in range(5):
        assert reasons[f"img{i:05d}.png"] == ("worker", "worker died 2 times on this chunk")
    assert survived
