"""Resume semantics (issue 22, case 5): an unfinished job on another version is reported, a
grown source is refused and its job still finishes with counts that agree, a cancel stops the
submission loop. PostgreSQL, Redis and the S3 store are real; most steps need no worker."""

from __future__ import annotations

import subprocess

import pytest
from sqlalchemy import func, select

from cxr.core.db.models import Chunk
from cxr.core.db.session import session_scope
from modelstore import open_model_store
from scheduler.submit import cancel
from tests import fault_support as faults
from tests import services
from tests import worker_support as support
from tests.integration.test_scheduler_celery import publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(settings, cli_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*faults.CXR, *args], env=support.worker_env(settings, cli_dir), capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_an_unfinished_job_on_another_version_is_reported_not_left_pending(cluster_settings, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "moved")
    faults.write_archive(tmp_path / "archive", 6, size=(48, 48), seed=8000)
    source = str(tmp_path / "archive")
    job_id = faults.submit_job(settings, tmp_path / "cli", source, "moved@production", 3)  # no worker
    store = open_model_store(settings)
    v2 = store.publish(
        "moved", support.build_model(tmp_path / "moved2.keras", seed=8), architecture="tiny_cnn",
        classes=support.CLASSES, input_contract=support.CONTRACT, output="softmax",
    )  # fmt: skip
    store.set_alias("moved", "production", v2.version)  # the alias moves after the "crash"

    again = _run(settings, tmp_path / "cli", "score", source, "--model", "moved@production", "--json")
    line = _one_line_error(again)
    assert f"job {job_id} for this source is unfinished with moved@1" in line
    assert "--model moved@1" in line and f"cxr jobs cancel {job_id}" in line

    resumed = _run(settings, tmp_path / "cli", "score", source, "--model", "moved@1", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"resumed": true' in resumed.stdout and job_id in resumed.stdout


def test_a_source_that_grew_is_refused_and_its_job_finishes_with_counts_that_agree(
    cluster_settings, tmp_path
):
    settings = cluster_settings
    publish(settings, tmp_path, "grown")
    archive = tmp_path / "archive"
    faults.write_archive(archive, 12, size=(48, 48), seed=8100)
    job_id = faults.submit_job(settings, tmp_path / "cli", str(archive), "grown@production", 4)
    (archive / "img99999.png").write_bytes(support.synthetic_png(8199, (48, 48)))  # after the walk

    grown = _run(settings, tmp_path / "cli", "score", str(archive), "--model", "grown@production",
                 "--chunk-size", "4", "--json")  # fmt: skip
    line = _one_line_error(grown)
    assert f"the source changed since job {job_id} was submitted" in line and "grew" in line

    log_path = tmp_path / "worker.log"
    worker = support.start_worker(settings, tmp_path / "worker", log_path)
    try:
        support.wait_for(lambda: faults.job_status(settings, job_id) == "finished", 120, "the job", worker,
                         log_path)  # fmt: skip
        job = faults.assert_exactly_once(settings, job_id, "grown", 12)
        assert (job.scored, job.failed) == (12, 0)
        # Once it finished, the same command is a new job: the new file scored, the rest skipped.
        after = _run(settings, tmp_path / "cli", "score", str(archive), "--model", "grown@production",
                     "--chunk-size", "4", "--wait", "--json")  # fmt: skip
    finally:
        services.stop_process(worker)
    assert after.returncode == 0, after.stderr[-3000:]
    assert '"total": 13' in after.stdout and '"scored": 1' in after.stdout and '"skipped": 12' in after.stdout


def test_a_cancel_during_submission_stops_it(cluster_settings, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "stopped")
    faults.write_archive(tmp_path / "archive", 1500, size=(16, 16), seed=8200)
    process = subprocess.Popen(
        [*faults.CXR, "score", str(tmp_path / "archive"), "--model", "stopped@production", "--chunk-size",
         "1", "--json"],
        env=support.worker_env(settings, tmp_path / "cli"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip

    def chunks() -> int:
        with session_scope(settings) as session:
            return session.scalar(select(func.count()).select_from(Chunk)) or 0

    try:
        support.wait_for(lambda: chunks() >= 20, 120, "submission to start")
        with session_scope(settings) as session:
            job_id = session.scalar(select(Chunk.job_id).limit(1))
        assert cancel(settings, job_id)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    result = subprocess.CompletedProcess(process.args, process.returncode, _out, err)
    line = _one_line_error(result)
    assert f"job {job_id} was cancelled during submission" in line
    assert chunks() < 1500
    assert faults.job_status(settings, job_id) == "cancelled"
