"""A real Celery worker process against real Redis, PostgreSQL and an S3 server.

The model is published to the S3 model store, the images are uploaded to S3, the chunk is sent by
task name through the broker, and the results are read back from PostgreSQL and compared with an
in-process forward pass.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from cxr.core.db.models import Chunk, Failure, Job, Prediction
from cxr.core.db.session import session_scope
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from modelstore import open_model_store
from tests import services
from tests import worker_support as support
from tests.dicom_files import malformed_voi_lut_dicom
from worker.app import CLASSIFY_CHUNK, make_app
from worker.lifecycle import available_cores, inference_threads

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_GOOD = 6


def scored_total(port: int) -> float:
    """Sum of cxr_images_scored_total over all label sets, scraped from the worker."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cxr_images_scored_total{")
    )


def job_state(settings: Settings, job_id: str) -> tuple[int, int]:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        return job.scored, job.failed


def tasks_succeeded(log_path: Path) -> int:
    lines = log_path.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if f"Task {CLASSIFY_CHUNK}[" in line and " succeeded in " in line)


def chunk_deliveries(settings: Settings, job_id: str) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(Chunk.deliveries).where(Chunk.job_id == job_id)) or 0


def test_real_worker_scores_a_chunk_from_s3_into_postgres(cluster_settings, celery_worker, tmp_path):
    settings = cluster_settings
    model_file = support.build_model(tmp_path / "tiny.keras")
    manifest = open_model_store(settings).publish(
        "worker-it", model_file, architecture="tiny_cnn", classes=support.CLASSES,
        input_contract=support.CONTRACT, output="softmax",
    )  # fmt: skip
    model = {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256}

    images = support.sample_images(N_GOOD)
    bucket = open_store(settings.storage_url.rsplit("/", 1)[0], settings)
    # Two bad files in the middle of the chunk: a corrupt PNG, and a DICOM whose malformed VOI
    # LUT makes pydicom raise struct.error, an exception no decoder documents.
    voi = malformed_voi_lut_dicom((np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16))
    files = [*images[:3], support.CORRUPT, voi, *images[3:]]
    uris = [bucket.put(f"archive/img{i}.img", data) for i, data in enumerate(files)]
    bad_uris = [uris[3], uris[4]]
    job_id = support.create_job(settings, model, total=len(uris))
    port = settings.metrics_port
    before = scored_total(port)

    app = make_app(settings)
    kwargs = {"job_id": job_id, "model": model, "uris": uris, "chunk_seq": 0}
    app.send_task(CLASSIFY_CHUNK, kwargs=kwargs)
    support.wait_for(
        lambda: sum(job_state(settings, job_id)) == len(uris), 180, "job counters", log_path=celery_worker
    )

    assert job_state(settings, job_id) == (N_GOOD, 2)
    assert scored_total(port) - before == len(uris)

    expected = support.reference_probabilities(model_file, images, support.CONTRACT)
    with session_scope(settings) as session:
        stored = {
            p.image_sha256: p.probabilities
            for p in session.scalars(select(Prediction).where(Prediction.job_id == job_id))
        }
        failures = session.scalars(select(Failure).where(Failure.job_id == job_id).order_by(Failure.id)).all()
    assert len(stored) == N_GOOD
    for data, row in zip(images, expected, strict=True):
        probs = stored[hashlib.sha256(data).hexdigest()]
        np.testing.assert_allclose([probs[c] for c in support.CLASSES], row, atol=1e-5)
    assert sorted(f.image_uri for f in failures) == sorted(bad_uris)
    assert all(f.stage == "decode" and f.reason for f in failures)
    assert "corrupt DICOM VOI LUT" in next(f.reason for f in failures if f.image_uri == uris[4])

    app.send_task(CLASSIFY_CHUNK, kwargs=kwargs)  # a redelivery of the same chunk
    support.wait_for(
        lambda: tasks_succeeded(celery_worker) == 2, 60, "second delivery", log_path=celery_worker
    )
    assert chunk_deliveries(settings, job_id) == 1  # a copy of a done chunk is a duplicate: not a start
    assert job_state(settings, job_id) == (N_GOOD, 2)
    with session_scope(settings) as session:
        count = session.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.job_id == job_id)
        )
        assert count == N_GOOD
    app.close()


def test_prefork_children_share_the_cores_between_their_tensorflow_threads(cluster_settings, tmp_path):
    """``--concurrency 2``: each child sizes TensorFlow's pools to its half of the cores (set
    through the environment before TensorFlow loads), so two children never oversubscribe."""
    log_path = tmp_path / "prefork.log"
    cores = available_cores()
    threads = inference_threads(Settings(), 2, cores)
    line = f"inference threads: {threads} (worker processes: 2, cores: {cores})"
    process = support.start_worker(
        cluster_settings, tmp_path / "data", log_path, pool="prefork", concurrency=2
    )
    try:
        both_sized = lambda: log_path.read_text(errors="replace").count(line) == 2  # noqa: E731
        support.wait_for(both_sized, 90, "two children with their thread share", process, log_path)
    finally:
        services.stop_process(process)
