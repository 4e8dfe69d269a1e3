"""The worker's engine in-process: a tiny real Keras model, images on a local store, SQLite."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, update

from cxr.core.db.models import Chunk, ChunkStatus, Failure, Job, JobImage, Prediction, utcnow
from cxr.core.db.session import session_scope
from cxr.core.imaging import decode_image
from cxr.core.settings import Settings
from cxr.core.storage.fetch import ObjectFetcher
from modelstore import ResolvedModel, open_model_store
from tests import worker_support as support
from worker.chunk import run_classify_chunk
from worker.engine import _lower_thread_priority, classify_uris
from worker.lease import claim, release
from worker.model_cache import ModelCache


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return support.build_model(tmp_path_factory.mktemp("model") / "tiny.keras")


@pytest.fixture
def model(settings, model_file) -> dict:
    manifest = open_model_store(settings).publish(
        "tiny", model_file, architecture="tiny_cnn", classes=support.CLASSES,
        input_contract=support.CONTRACT, output="softmax",
    )  # fmt: skip
    return {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256}


def write_images(folder: Path, images: list[bytes]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for index, data in enumerate(images):
        path = folder / f"img{index}.png"
        path.write_bytes(data)
        uris.append(path.as_uri())
    return uris


def predictions(settings: Settings, job_id: str) -> dict[str, dict]:
    with session_scope(settings) as session:
        rows = session.scalars(select(Prediction).where(Prediction.job_id == job_id)).all()
        return {row.image_sha256: row.probabilities for row in rows}


def job_counters(settings: Settings, job_id: str) -> tuple[int, int, str]:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        return job.scored, job.failed, job.status.value


def test_batched_results_equal_single_image_predict(settings, model, model_file, tmp_path):
    images = [support.synthetic_png(seed) for seed in range(5)]  # 5 = two full batches + one
    uris = write_images(tmp_path / "images", images)
    job_id = support.create_job(settings, model, total=len(uris))

    report = run_classify_chunk(settings, job_id, model, uris, chunk_seq=0, cache=ModelCache(settings))

    assert (report.status, report.scored, report.failed) == ("done", 5, 0)
    expected = support.reference_probabilities(model_file, images, support.CONTRACT)
    stored = predictions(settings, job_id)
    for data, row in zip(images, expected, strict=True):
        probs = stored[hashlib.sha256(data).hexdigest()]
        np.testing.assert_allclose([probs[c] for c in support.CLASSES], row, atol=1e-5)
    assert job_counters(settings, job_id) == (5, 0, "finished")


def test_corrupt_and_missing_images_become_failures_while_the_rest_is_scored(settings, model, tmp_path):
    uris = write_images(
        tmp_path / "images", [support.synthetic_png(1), support.CORRUPT, support.synthetic_png(2)]
    )
    missing = (tmp_path / "images" / "gone.png").as_uri()
    job_id = support.create_job(settings, model, total=4)

    report = run_classify_chunk(settings, job_id, model, [*uris, missing], 0, cache=ModelCache(settings))

    assert (report.scored, report.failed) == (2, 2)
    with session_scope(settings) as session:
        failures = {f.image_uri: f for f in session.scalars(select(Failure)).all()}
    assert failures[uris[1]].stage == "decode"
    assert failures[uris[1]].reason and failures[uris[1]].image_sha256
    assert failures[missing].stage == "fetch"
    assert len(predictions(settings, job_id)) == 2
    assert job_counters(settings, job_id) == (2, 2, "finished")


def test_whatever_a_decoder_raises_on_one_file_costs_that_file_only(settings, model, tmp_path, monkeypatch):
    """A third-party decoder's own exceptions (not our ImageError), a MemoryError and a decoder
    that hangs each fail their one image with a reason; the rest of the chunk is scored."""
    import struct
    import time
    import zlib

    from worker import engine

    settings = settings.model_copy(update={"decode_timeout_s": 1.0})
    images = [support.synthetic_png(seed) for seed in range(7)]
    uris = write_images(tmp_path / "images", images)
    bad = {images[1]: struct.error("unpack requires a buffer of 4 bytes"),
           images[3]: zlib.error("Error -3 while decompressing data"),
           images[4]: MemoryError()}  # fmt: skip
    hanging = images[5]
    real_decode = engine.decode_image

    def decode_with_faults(data: bytes, **kwargs):
        if data in bad:
            raise bad[data]
        if data == hanging:
            time.sleep(3)  # a decoder stuck in a loop, longer than the time bound
        return real_decode(data, **kwargs)

    monkeypatch.setattr(engine, "decode_image", decode_with_faults)
    job_id = support.create_job(settings, model, total=len(uris))
    started = time.perf_counter()
    report = run_classify_chunk(settings, job_id, model, uris, 0, cache=ModelCache(settings))

    assert time.perf_counter() - started < 3, "the chunk did not wait for the stuck decoder"
    assert (report.status, report.scored, report.failed) == ("done", 3, 4)
    with session_scope(settings) as session:
        failures = {f.image_uri: (f.stage, f.reason) for f in session.scalars(select(Failure)).all()}
    assert failures == {
        uris[1]: ("decode", "error: unpack requires a buffer of 4 bytes"),
        uris[3]: ("decode", "error: Error -3 while decompressing data"),
        uris[4]: ("decode", "image too large to decode in memory"),
        uris[5]: ("decode", "fetch and decode took longer than 1 s"),
    }
    assert job_counters(settings, job_id) == (3, 4, "finished")


def test_a_chunk_given_up_is_counted_in_the_failure_metric(settings, model, tmp_path):
    from prometheus_client import REGISTRY

    from cxr.core.outcomes import FailureStage
    from worker.results import give_up_chunk

    def failed(stage: str) -> float:
        labels = {"model": "tiny", "version": str(model["version"]), "outcome": "failed"}
        labels |= {"class": "", "stage": stage}
        return REGISTRY.get_sample_value("cxr_images_scored_total", labels) or 0.0

    uris = write_images(tmp_path / "images", [support.synthetic_png(s) for s in range(3)])
    job_id = support.create_job(settings, model, total=3)
    before = failed("timeout")
    spec = ResolvedModel.from_dict(model)
    give_up_chunk(settings, spec, job_id, 0, uris, FailureStage.TIMEOUT, "chunk exceeded its limit")
    assert failed("timeout") == before + 3
    give_up_chunk(settings, spec, job_id, 0, uris, FailureStage.TIMEOUT, "again")  # already final
    assert failed("timeout") == before + 3
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Failure)) == 3


def test_same_chunk_twice_stores_one_prediction_per_image_and_counts_once(settings, model, tmp_path):
    uris = write_images(tmp_path / "images", [support.synthetic_png(s) for s in range(3)] + [support.CORRUPT])
    job_id = support.create_job(settings, model, total=4)
    cache = ModelCache(settings)

    first = run_classify_chunk(settings, job_id, model, uris, 0, cache=cache)
    counters = job_counters(settings, job_id)
    second = run_classify_chunk(settings, job_id, model, uris, 0, cache=cache)

    assert first.status == "done" and second.status == "already-done"
    assert job_counters(settings, job_id) == counters == (3, 1, "finished")
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 3
        assert session.scalar(select(func.count()).select_from(Failure)) == 1
        chunk = session.scalars(select(Chunk)).one()
        assert (chunk.status, chunk.deliveries, chunk.deaths) == (ChunkStatus.DONE, 1, 0)


def _die_holding(settings, job_id: str, seq: int, uris: list[str]) -> None:
    """A start whose worker died: the lease is taken and never released, and it runs out."""
    assert claim(settings, job_id, seq, uris).claimed
    with session_scope(settings) as session:
        session.execute(
            update(Chunk)
            .where(Chunk.job_id == job_id, Chunk.seq == seq)
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )


def test_a_delivery_that_finds_a_live_lease_is_a_duplicate_and_counts_nothing(settings, model, tmp_path):
    uris = write_images(tmp_path / "images", [support.synthetic_png(0)])
    job_id = support.create_job(settings, model, total=1)
    holder = claim(settings, job_id, 0, uris)
    for _ in range(settings.max_deliveries + 2):
        report = run_classify_chunk(settings, job_id, model, uris, 0, cache=ModelCache(settings))
        assert report.status == "duplicate" and report.retry_in > 0
    release(settings, job_id, 0, holder.owner)  # the holder ended cleanly without finishing
    report = run_classify_chunk(settings, job_id, model, uris, 0, cache=ModelCache(settings))
    assert report.status == "done"
    with session_scope(settings) as session:
        chunk = session.scalars(select(Chunk)).one()
        assert (chunk.deliveries, chunk.deaths, chunk.lease_owner) == (2, 0, None)


def test_a_chunk_that_killed_its_worker_too_often_is_given_up(settings, model, tmp_path):
    uris = write_images(tmp_path / "images", [support.synthetic_png(s) for s in range(2)])
    job_id = support.create_job(settings, model, total=2)
    for _ in range(settings.max_deliveries):  # starts that never finished: the worker died
        _die_holding(settings, job_id, 0, uris)

    report = run_classify_chunk(settings, job_id, model, uris, 0, cache=ModelCache(settings))

    assert report.status == "gave-up"
    with session_scope(settings) as session:
        reasons = {f.reason for f in session.scalars(select(Failure)).all()}
    assert reasons == {f"worker died {settings.max_deliveries} times on this chunk"}
    assert predictions(settings, job_id) == {}
    assert job_counters(settings, job_id) == (0, 2, "finished")


def test_retried_deliveries_do_not_count_as_deaths(settings, model, tmp_path):
    uris = write_images(tmp_path / "images", [support.synthetic_png(0)])
    job_id = support.create_job(settings, model, total=1)
    for _ in range(settings.max_deliveries):  # starts that ended in a retry released the lease
        release(settings, job_id, 0, claim(settings, job_id, 0, uris).owner)

    report = run_classify_chunk(
        settings, job_id, model, uris, 0, attempt=settings.max_deliveries, cache=ModelCache(settings)
    )
    assert report.status == "done"


def test_model_cache_loads_once_and_evicts_least_recently_used(settings, model, model_file):
    store = open_model_store(settings)
    second = store.publish(
        "tiny", model_file, architecture="tiny_cnn", classes=support.CLASSES,
        input_contract=support.CONTRACT, output="softmax",
    )  # fmt: skip
    cache = ModelCache(settings, capacity=1)
    first_spec = ResolvedModel.from_dict(model)
    loaded = cache.get(first_spec)
    assert cache.get(first_spec) is loaded
    assert loaded.load_seconds > 0
    cache.get(ResolvedModel(second.name, second.version, second.sha256))
    assert len(cache) == 1 and first_spec not in cache


def test_sigmoid_output_becomes_two_class_probabilities_and_a_tie_goes_to_the_first_class():
    from modelstore.outputs import class_probabilities, label_indices

    probs = class_probabilities(np.array([[0.9], [0.2], [0.5]]), "sigmoid")
    np.testing.assert_allclose(probs, [[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    assert label_indices(probs).tolist() == [1, 0, 0]


def test_without_a_broker_chunks_run_in_process(settings, model, tmp_path):
    from worker.app import send_classify_chunk

    uris = write_images(tmp_path / "images", [support.synthetic_png(s) for s in range(3)])
    job_id = support.create_job(settings, model, total=3)
    assert settings.in_process
    send_classify_chunk(settings, job_id, model, uris, 0)
    assert job_counters(settings, job_id) == (3, 0, "finished")


def test_unreachable_storage_is_retried_then_recorded_as_fetch_failures(settings, model, monkeypatch):
    from cxr.core.settings import reload_settings
    from tests.services import free_port
    from worker.tasks import classify_chunk

    env = {
        "CXR_DATA_DIR": str(settings.data_dir),
        "CXR_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "CXR_S3_ACCESS_KEY_ID": "x",
        "CXR_S3_SECRET_ACCESS_KEY": "y",
        "CXR_S3_MAX_ATTEMPTS": "1",
        "CXR_TASK_MAX_RETRIES": "2",
        "CXR_RETRY_BACKOFF_S": "0.01",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    task_settings = reload_settings()
    uris = ["s3://archive/a.png", "s3://archive/b.png"]
    job_id = support.create_job(task_settings, model, total=2)
    try:
        result = classify_chunk.apply(kwargs={"job_id": job_id, "model": model, "uris": uris, "chunk_seq": 0})
    finally:
        monkeypatch.undo()
        reload_settings()

    assert result.failed()
    with session_scope(settings) as session:
        failures = session.scalars(select(Failure)).all()
        chunk = session.scalars(select(Chunk)).one()
    assert {f.stage for f in failures} == {"fetch"} and len(failures) == 2
    assert "gave up after 2 retries" in failures[0].reason
    assert chunk.status == ChunkStatus.FAILED and chunk.deliveries == 3  # 1 start + 2 retries


def test_a_pinned_model_that_fails_its_checksum_fails_the_chunk_images(settings, model, tmp_path):
    uris = write_images(tmp_path / "images", [support.synthetic_png(0)])
    job_id = support.create_job(settings, model, total=1)
    tampered = {**model, "sha256": "f" * 64}

    report = run_classify_chunk(settings, job_id, tampered, uris, 0, cache=ModelCache(settings))

    assert report.status == "gave-up" and "unavailable" in report.reason
    with session_scope(settings) as session:
        assert session.scalars(select(Failure.stage)).all() == ["model"]
    assert job_counters(settings, job_id) == (0, 1, "finished")


def test_images_this_version_already_scored_are_skipped_not_rescored(settings, model, tmp_path):
    same = support.synthetic_png(7)
    uris = write_images(tmp_path / "a", [same, support.synthetic_png(8), same])  # a duplicate inside
    first_job = support.create_job(settings, model, total=3)
    report = run_classify_chunk(settings, first_job, model, uris, 0, cache=ModelCache(settings))
    assert (report.scored, report.failed) == (2, 0)
    with session_scope(settings) as session:
        job = session.get(Job, first_job)
        assert (job.scored, job.skipped, job.status.value) == (2, 1, "finished")

    again = write_images(tmp_path / "b", [same, support.synthetic_png(9)])  # same bytes, new name
    second_job = support.create_job(settings, model, total=2)
    run_classify_chunk(settings, second_job, model, again, 0, cache=ModelCache(settings))
    with session_scope(settings) as session:
        job = session.get(Job, second_job)
        assert (job.scored, job.skipped, job.status.value) == (1, 1, "finished")
        outcomes = dict(
            session.execute(select(JobImage.uri, JobImage.outcome).where(JobImage.job_id == second_job)).all()
        )
        assert outcomes == {again[0]: "skipped", again[1]: "scored"}
        assert session.scalar(select(func.count()).select_from(Prediction)) == 3  # 3 distinct images


def test_the_first_batch_of_a_chunk_is_small_and_the_rest_are_full(settings, model, tmp_path):
    """The model starts after a quarter batch is decoded; later batches are full, the last holds
    what is left, and every image is scored once."""
    settings = settings.model_copy(update={"inference_batch_size": 8})
    uris = write_images(tmp_path / "in", support.sample_images(21))
    loaded = ModelCache(settings).get(ResolvedModel.from_dict(model))
    sizes: list[int] = []

    compiled = loaded.forward

    def forward(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return compiled(batch)

    loaded.forward = forward
    outcome = classify_uris(uris, loaded, settings, ObjectFetcher(settings))
    assert sizes == [2, 8, 8, 3]
    assert len(outcome.scored) == 21 and not outcome.failures


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_decode_threads_run_nicer_than_the_model():
    seen: list[int] = []

    def body() -> None:
        _lower_thread_priority(7)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, 0)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [min(before + 7, 19)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # caller untouched


def test_a_chunk_that_ends_after_its_job_was_cancelled_adds_nothing(settings, model, tmp_path):
    """Cancel freezes the job: the report written at cancel time stays exact."""
    from scheduler.submit import cancel
    from worker.results import write_chunk

    uris = write_images(tmp_path / "images", [support.synthetic_png(s) for s in range(2)])
    job_id = support.create_job(settings, model, total=2)
    spec = ResolvedModel.from_dict(model)
    assert claim(settings, job_id, 0, uris).claimed
    runtime = ModelCache(settings).get(spec)
    outcome = classify_uris(uris, runtime, settings, ObjectFetcher(settings))
    assert cancel(settings, job_id)  # while the chunk ran

    summary = write_chunk(settings, job_id, 0, spec, runtime.classes, outcome)

    assert summary.already_done and predictions(settings, job_id) == {}
    assert job_counters(settings, job_id) == (0, 0, "cancelled")


def test_the_insert_decides_who_scores_identical_bytes_not_a_read_before_it(settings, model, tmp_path):
    """Two chunks holding the same bytes under other names both pass the "already scored?" read
    (neither has committed), both infer; the one whose prediction INSERT lands first scores,
    the other counts its images skipped: the race made deterministic."""
    from worker.results import write_chunk

    images = [support.synthetic_png(s) for s in range(3)]
    first_uris = write_images(tmp_path / "a", images)
    second_uris = write_images(tmp_path / "b", images)
    job_id = support.create_job(settings, model, total=6)
    spec = ResolvedModel.from_dict(model)
    runtime = ModelCache(settings).get(spec)
    outcomes = [
        classify_uris(uris, runtime, settings, ObjectFetcher(settings)) for uris in (first_uris, second_uris)
    ]
    assert [len(o.scored) for o in outcomes] == [3, 3]  # both computed before either wrote

    first = write_chunk(settings, job_id, 0, spec, runtime.classes, outcomes[0])
    second = write_chunk(settings, job_id, 1, spec, runtime.classes, outcomes[1])

    assert (first.scored, first.skipped, second.scored, second.skipped) == (3, 0, 0, 3)
    assert len(predictions(settings, job_id)) == 3
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert (job.scored, job.skipped) == (3, 3)
        reasons = set(session.scalars(select(JobImage.reason).where(JobImage.chunk_seq == 1)))
    assert reasons == {"already scored by this model version"}


def test_a_uniform_image_is_skipped_for_no_contrast_before_the_model():
    """A blank page has no contrast: skipped with the reason, never scored or failed."""
    from PIL import Image

    from cxr.core.imaging.decode import no_contrast

    flat = np.full((64, 64), 0.5, np.float32)
    assert "no contrast" in (no_contrast(flat) or "")
    assert no_contrast(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)) is None
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 200).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), max_bytes=1 << 20, max_pixels=10**6)
    assert "no contrast" in (no_contrast(decoded.pixels) or "")
