"""`cxr score` against the whole cluster: a real worker, Redis, PostgreSQL and the S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cxr.core.db.models import Chunk, Job, JobImage, Prediction
from cxr.core.db.session import session_scope
from cxr.core.storage import open_store
from modelstore import open_model_store
from tests import worker_support as support

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CXR = [sys.executable, "-m", "cxr.cli.main"]


def cxr(settings, data_dir: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = support.worker_env(settings, data_dir)
    return subprocess.Popen([*CXR, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(process: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return json.loads(out)


def publish(settings, tmp_path: Path, name: str) -> None:
    open_model_store(settings).publish(
        name, support.build_model(tmp_path / f"{name}.keras"), architecture="tiny_cnn",
        classes=support.CLASSES, input_contract=support.CONTRACT, output="softmax", aliases=["production"],
    )  # fmt: skip


def test_score_an_s3_prefix_with_a_real_worker(cluster_settings, celery_worker, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "sched-s3")
    bucket_uri = settings.storage_url.rsplit("/", 1)[0]
    bucket = open_store(bucket_uri, settings)
    images = support.sample_images(8)
    for i, data in enumerate(images):
        bucket.put(f"archive/site-{i % 2}/img{i}.jpg", data)
    bucket.put("archive/site-0/broken.png", support.CORRUPT)
    bucket.put("archive-old/not-this-one.png", images[0])  # a sibling prefix, not inside the archive

    summary = finish(cxr(settings, tmp_path / "cli", "score", f"{bucket_uri}/archive", "--model",
                         "sched-s3@production", "--chunk-size", "3", "--wait", "--json"))  # fmt: skip

    assert (summary["total"], summary["scored"], summary["failed"], summary["status"]) == (
        9,
        8,
        1,
        "finished",
    )
    assert sum(summary["by_label"].values()) == 8
    assert summary["failures"][0]["uri"] == f"{bucket_uri}/archive/site-0/broken.png"
    assert summary["report_files"]["html"].startswith("s3://")
    assert b"Research use only" in open_store(settings=settings).get(
        f"reports/jobs/{summary['job_id']}/report.html"
    )


def test_a_killed_scheduler_is_resumed_and_every_image_scored_once(cluster_settings, celery_worker, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "sched-kill")
    archive = tmp_path / "archive"
    archive.mkdir()
    n_images = 300
    for seed in range(n_images):
        (archive / f"img{seed:04d}.png").write_bytes(support.synthetic_png(1000 + seed, size=(40, 40)))
    source = archive.resolve().as_uri()

    def chunks_sent() -> int:
        with session_scope(settings) as session:
            job = session.scalar(select(Job).where(Job.source == source))
            if job is None:
                return 0
            return session.scalar(select(func.count()).select_from(Chunk).where(Chunk.job_id == job.id))

    first = cxr(settings, tmp_path / "cli", "score", str(archive), "--model", "sched-kill@production",
                "--chunk-size", "1", start_new_session=True)  # fmt: skip
    support.wait_for(lambda: chunks_sent() >= 20 or first.poll() is not None, 120, "the first chunks")
    if first.poll() is not None:
        pytest.fail(f"the scheduler ended (rc {first.returncode}) before it could be killed: "
                    f"{first.stderr.read().decode(errors='replace')[-2000:]}")  # fmt: skip
    os.killpg(first.pid, signal.SIGKILL)  # the scheduler dies mid-submit
    first.wait()
    sent_before_kill = chunks_sent()
    assert 20 <= sent_before_kill < n_images, "the scheduler finished before it could be killed"

    time.sleep(1)
    rerun = [
        "score",
        str(archive),
        "--model",
        "sched-kill@production",
        "--chunk-size",
        "1",
        "--wait",
        "--json",
    ]
    summary = finish(cxr(settings, tmp_path / "cli", *rerun))

    assert (summary["status"], summary["total"], summary["failed"]) == ("finished", n_images, 0)
    assert summary["scored"] + summary["skipped"] == n_images
    with session_scope(settings) as session:
        jobs = session.scalars(select(Job).where(Job.source == source)).all()
        assert [job.id for job in jobs] == [summary["job_id"]]  # the same job, resumed
        predictions = session.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.model_name == "sched-kill")
        )
        assert predictions == n_images  # exactly one per image
        assert (
            session.scalar(
                select(func.count()).select_from(JobImage).where(JobImage.job_id == summary["job_id"])
            )
            == n_images
        )
        assert (
            session.scalar(select(func.count()).select_from(Chunk).where(Chunk.job_id == summary["job_id"]))
            == n_images
        )
