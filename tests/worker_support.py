"""Helpers shared by the worker's unit and integration tests: a tiny real Keras model, images
(real chest X-rays from the shared dev set when present, else synthetic gray PNGs) and a job."""

from __future__ import annotations

import csv
import io
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.core.db.models import Job, JobStatus
from cxr.core.db.session import session_scope
from cxr.core.imaging import InputContract, decode_image, preprocess
from cxr.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
CXR_DEV = REPO_ROOT.parent / "shared" / "data" / "cxr-dev"  # the dev set, where CI puts it
SAMPLE = REPO_ROOT / "samples" / "cxr-sample"  # shipped with the repository
CLASSES = ["covid", "normal", "pneumonia"]
CONTRACT = InputContract(height=32, width=32, channels=1, normalization="unit")
CORRUPT = b"\x89PNG\r\n\x1a\n this is not the rest of a PNG file"


def build_model(path: Path, contract: InputContract = CONTRACT, classes: int = 3, seed: int = 7) -> Path:
    """A tiny CNN with deterministic random weights, saved as ``.keras``."""
    import keras

    keras.utils.set_random_seed(seed)
    output = (
        keras.layers.Dense(classes, activation="softmax")
        if classes > 1
        else keras.layers.Dense(1, activation="sigmoid")
    )
    model = keras.Sequential(
        [
            keras.Input(shape=contract.shape),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv_last"),
            keras.layers.GlobalAveragePooling2D(),
            output,
        ]
    )
    model.save(path)
    return path


def synthetic_png(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    """A gray PNG with a smooth gradient and noise (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    height, width = size
    ramp = np.linspace(0, 1, width)[None, :] * np.linspace(0.3, 1, height)[:, None]
    pixels = np.clip(ramp * 200 + rng.normal(0, 20, size), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def sample_images(count: int) -> list[bytes]:
    """``count`` real X-ray files (the shared dev set, else the shipped sample), else synthetic."""
    for root in (CXR_DEV, SAMPLE):
        manifest = root / "manifest.csv"
        if not manifest.exists():
            continue
        with manifest.open() as stream:
            paths = [root / row["path"] for row in csv.DictReader(stream)]
        found = [path.read_bytes() for path in paths[:: max(1, len(paths) // count)] if path.exists()]
        if len(found) >= count:
            return found[:count]
    return [synthetic_png(seed) for seed in range(count)]


def reference_probabilities(model_path: Path, images: list[bytes], contract: InputContract) -> np.ndarray:
    """An independent forward pass: one ``model.predict`` per image, no batching, on the pixels
    the contract's decode rule gives (``decode_side``), as every caller decodes."""
    from modelstore.loading import load_keras_model

    model = load_keras_model(model_path)
    rows = []
    for data in images:
        pixels = decode_image(
            data, max_bytes=1 << 26, max_pixels=60_000_000, target_side=contract.decode_side
        ).pixels
        tensor = preprocess(pixels, contract)[None]
        rows.append(np.asarray(model.predict(tensor, verbose=0))[0])
    return np.array(rows)


def create_job(settings: Settings, model: dict, total: int) -> str:
    """A running job row pinned to ``model`` (what the scheduler would have written)."""
    with session_scope(settings) as session:
        job = Job(
            source="test",
            model_name=model["name"],
            model_version=model["version"],
            model_sha256=model["sha256"],
            total=total,
            enqueued=total,
            status=JobStatus.RUNNING,
        )
        session.add(job)
        session.flush()
        return job.id


def worker_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """The environment that points a worker process at the same services as ``settings``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CXR_DATA_DIR": str(data_dir)}
    for name in (
        "database_url", "storage_url", "s3_endpoint_url", "s3_access_key_id", "s3_secret_access_key",
        "s3_max_attempts", "broker_url", "broker_key_prefix", "metrics_port", "inference_batch_size",
        "decode_threads", "decode_niceness", "decode_timeout_s", "task_time_limit_s", "max_deliveries",
        "task_max_retries", "chunk_lease_s", "retry_backoff_s", "retry_backoff_max_s", "patient_id_salt",
        "chunk_size", "inference_threads", "shift_policy", "dicomweb_username", "dicomweb_password",
        "dicomweb_token",
    ):  # fmt: skip
        value = getattr(settings, name)
        if value is not None:
            value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            env[f"CXR_{name.upper()}"] = str(value)
    return env


def start_worker(
    settings: Settings,
    data_dir: Path,
    log_path: Path,
    pool: str = "solo",
    concurrency: int = 1,
    app: str = "worker",
    queue: str = "gpu",
) -> subprocess.Popen:
    """``celery -A worker worker -Q gpu -P solo`` (or ``-P prefork -c N``, another app or queue)
    as a subprocess logging to ``log_path``."""
    command = [
        sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-P", pool,
        "-c", str(concurrency),
        "-l", "INFO", "-n", f"test-{secrets.token_hex(3)}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=worker_env(settings, data_dir), stdout=log, stderr=subprocess.STDOUT
        )


def worker_ready(log_path: Path) -> bool:
    return b" ready." in log_path.read_bytes()


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    process: subprocess.Popen | None = None,
    log_path: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.3)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def embedded_with_tiny_model(tmp_path: Path, **overrides: object) -> Settings:
    """Embedded defaults (SQLite + local store) under ``tmp_path``, migrated, with the tiny test
    model published as ``tiny@production``."""
    from cxr.core.db.migrate import upgrade
    from modelstore import open_model_store

    settings = Settings(data_dir=tmp_path / "cxr-data", **overrides)
    upgrade(settings=settings)
    open_model_store(settings).publish(
        "tiny", build_model(tmp_path / "tiny.keras"), architecture="tiny_cnn", classes=CLASSES,
        input_contract=CONTRACT, output="softmax", aliases=["production"],
    )  # fmt: skip
    return settings


def train_sample_model(settings: Settings, name: str) -> str:
    """A small CNN trained (deterministically) on the shipped sample through the real training
    path and published as ``NAME@production``, with operating points and a shift reference fitted
    on real radiographs. k-NN, the default shift measure, needs more than the sample's 28 training
    films to be stable; the shrunk Mahalanobis distance is robust to so few."""
    from training_jobs.train import TrainConfig, train

    result = train(
        TrainConfig(
            data=str(SAMPLE / "manifest.csv"), arch="simple_cnn", classes=tuple(CLASSES), name=name,
            image_size=64, epochs=6, batch_size=8, bootstrap_resamples=20, publish=True,
            aliases=("production",), verbose=0, deterministic=True, shift_method="mahalanobis",
        ),
        settings,
    )  # fmt: skip
    assert result.model_ref is not None
    return result.model_ref
