"""Operator mistakes end in one line and exit status 1, never a traceback (issue 22, case 7), and
``--wait`` says what to run when a job stalls. Each case runs the real ``cxr`` in a subprocess
against real services (or the real absence of one)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cxr.core.db.models import Job
from cxr.core.db.session import session_scope
from tests import fault_support as faults
from tests import services
from tests import worker_support as support
from tests.integration.test_scheduler_celery import publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_DATA_DIR=str(data_dir), TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


def _cxr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*faults.CXR, *args], env=env, capture_output=True, text=True, timeout=180)


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]  # log lines may precede it
    return errors[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"CXR_CHUNK_SIZE": "lots"}, "invalid setting CXR_CHUNK_SIZE='lots'"),
        ({"CXR_MAX_DELIVERIES": "0"}, "invalid setting CXR_MAX_DELIVERIES"),
        ({"CXR_DATABASE_URL": "definitely not a url"}, "CXR_DATABASE_URL is not a valid database URL"),
        ({"CXR_DATABASE_URL": "nosuchdb://x/y"}, "CXR_DATABASE_URL is not a valid database URL"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, extra, expected):
    assert expected in _one_line(_cxr(_env(tmp_path / "data", **extra), "jobs", "list"))


def test_an_unreachable_database_is_one_line_and_verbose_shows_the_traceback(tmp_path):
    url = f"postgresql+psycopg2://cxr:secret-pw@127.0.0.1:{services.free_port()}/cxr"  # nothing listens
    env = _env(tmp_path / "data", CXR_DATABASE_URL=url)
    line = _one_line(_cxr(env, "jobs", "list"))
    assert "cannot reach the database" in line and "secret-pw" not in line
    verbose = _cxr(env, "-v", "jobs", "list")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_an_unwritable_data_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = _one_line(_cxr(_env(blocker / "data"), "jobs", "list"))
    assert "cannot write" in line and "CXR_DATA_DIR" in line


def test_a_full_disk_is_one_line(tmp_path):
    """/dev/full answers every write with ENOSPC: a real full device for the report."""
    settings = support.embedded_with_tiny_model(tmp_path)
    faults.write_archive(tmp_path / "archive", 3, size=(48, 48), seed=9000)
    result = _cxr(_env(settings.data_dir), "score", str(tmp_path / "archive"), "--model", "tiny@production",
                  "--report", "/dev/full")  # fmt: skip
    assert "no space left on the device" in _one_line(result)


def test_chunk_size_zero_is_refused(tmp_path):
    result = _cxr(
        _env(tmp_path / "data"), "score", str(tmp_path), "--model", "x@production", "--chunk-size", "0"
    )
    assert result.returncode == 2 and "Invalid value for '--chunk-size'" in result.stderr


def test_redis_down_during_submission_is_one_line_and_leaves_no_job(cluster_settings, tmp_path):
    settings = cluster_settings.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{services.free_port()}/0"}
    )
    publish(settings, tmp_path, "nobroker")
    faults.write_archive(tmp_path / "archive", 4, size=(48, 48), seed=9100)
    result = subprocess.run(
        [*faults.CXR, "score", str(tmp_path / "archive"), "--model", "nobroker@production"],
        env=support.worker_env(settings, tmp_path / "cli"), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    line = _one_line(result)
    assert "cannot reach the broker" in line and "nothing was submitted" in line
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_wait_warns_when_nothing_moves_and_says_what_to_run(cluster_settings, tmp_path):
    """No worker: first the chunks sit in the queue (start a worker), then the private broker
    loses them (FLUSHALL, as a restart without persistence would): run the same command again."""
    import redis

    with faults.private_redis(tmp_path / "redis") as broker:
        settings = cluster_settings.model_copy(update={"broker_url": broker})
        publish(settings, tmp_path, "stall")
        faults.write_archive(tmp_path / "archive", 4, size=(48, 48), seed=9200)
        env = {**support.worker_env(settings, tmp_path / "cli"), "CXR_WAIT_STALL_WARN_S": "2"}
        waiting = subprocess.Popen(
            [*faults.CXR, "score", str(tmp_path / "archive"), "--model", "stall@production", "--wait",
             "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            support.wait_for(
                lambda: faults.model_job_status(settings, "stall") == "running", 60, "submission"
            )
            time.sleep(5)
            redis.Redis.from_url(broker).flushall()  # our own server: the queued chunks are gone
            time.sleep(5)
        finally:
            waiting.terminate()
            _out, err = waiting.communicate(timeout=30)
    assert "chunks queued: is a worker running? start one with `celery -A worker worker -Q gpu`" in err
    assert "the gpu queue is empty" in err and "run the same `cxr score` again" in err
