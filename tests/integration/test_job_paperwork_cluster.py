"""A job submitted with --no-wait to a real worker ends with its CSV and HTML report in object
storage, by itself: the worker that records the last chunk sends the report task (queue
``default``), and `cxr jobs show` / `cxr jobs report` find them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cxr.core.db.models import Job
from cxr.core.db.session import session_scope
from cxr.core.storage import read_uri
from modelstore import open_model_store
from tests import services
from tests import worker_support as support

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cxr(settings, data_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cxr.cli.main", *args], env=support.worker_env(settings, data_dir),
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip


def test_no_wait_job_ends_with_its_report_stored(cluster_settings, tmp_path):
    settings = cluster_settings
    open_model_store(settings).publish(
        "paper", support.build_model(tmp_path / "paper.keras"), architecture="tiny_cnn",
        classes=support.CLASSES, input_contract=support.CONTRACT, output="softmax", aliases=["production"],
    )  # fmt: skip
    archive = tmp_path / "archive"
    archive.mkdir()
    for i, data in enumerate(support.sample_images(5)):
        (archive / f"film{i}.png").write_bytes(data)
    log_path = tmp_path / "worker.log"
    worker = support.start_worker(settings, tmp_path / "worker-data", log_path, queue="gpu,default")
    try:
        support.wait_for(lambda: support.worker_ready(log_path), 90, "worker ready", worker, log_path)
        submitted = json.loads(
            cxr(settings, tmp_path / "cli", "score", str(archive), "--model", "paper@production",
                "--chunk-size", "2", "--no-wait", "--json").stdout
        )  # fmt: skip
        job_id = submitted["job_id"]

        def stored() -> bool:
            with session_scope(settings) as session:
                job = session.get(Job, job_id)
                return bool(job.report_uri and job.csv_uri)

        support.wait_for(stored, 120, "the job's report", worker, log_path)
    finally:
        services.stop_process(worker)
    assert "cxr.report_job" in log_path.read_text(errors="replace")

    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        report_uri, csv_uri, status = job.report_uri, job.csv_uri, job.status.value
    assert status == "finished"
    assert report_uri.startswith("s3://") and csv_uri.startswith("s3://")
    assert read_uri(csv_uri, settings).decode().count("\n") == 6  # a header and five films

    shown = cxr(settings, tmp_path / "cli", "jobs", "show", job_id).stdout
    assert f"report: {report_uri}" in shown and f"per-image CSV: {csv_uri}" in shown
    copy = tmp_path / "x.html"
    cxr(settings, tmp_path / "cli", "jobs", "report", job_id, "--out", str(copy))
    assert copy.read_bytes() == read_uri(report_uri, settings)
    assert b"Research use only" in copy.read_bytes()
