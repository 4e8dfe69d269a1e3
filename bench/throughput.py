"""Scoring throughput: bare model vs the whole worker path vs one task per image.

    python -m bench.throughput --model mobilenetv2 --images 64 --json

(a) bare:  the compiled forward pass on already decoded and preprocessed tensors, in batches;
(b) e2e:   chunks sent through Redis to a real ``celery -A worker worker -P solo`` process that
           fetches from an S3 server, decodes, infers and writes to PostgreSQL;
(c) naive: the same worker and services, one task per image (a batch of one per task).

The services are the test suite's (``tests/services.py``): a SeaweedFS S3 server started here,
the local PostgreSQL (a scratch database) and Redis (a unique key prefix). The model has random
weights: throughput does not depend on them. Keep ``--images`` small on shared machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cxr.core.db.migrate import upgrade
from cxr.core.db.models import Job
from cxr.core.db.session import dispose_engines, session_scope
from cxr.core.imaging import InputContract, decode_image, preprocess
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from tests import services
from tests import worker_support as support
from worker.app import CLASSIFY_CHUNK, make_app

log = logging.getLogger("bench.throughput")

CONTRACTS = {
    "mobilenetv2": lambda size: InputContract(height=size, width=size, channels=3, normalization="symmetric"),
    "simple_cnn": lambda size: InputContract(height=size, width=size, channels=1, normalization="unit"),
}


def build_model(name: str, contract: InputContract, path: Path) -> Path:
    """MobileNetV2 (random weights) or a small from-scratch CNN, saved as ``.keras``."""
    import keras

    if name == "mobilenetv2":
        model = keras.applications.MobileNetV2(
            weights=None, input_shape=contract.shape, classes=len(support.CLASSES)
        )
    else:
        layers = keras.layers
        model = keras.Sequential(
            [
                keras.Input(shape=contract.shape),
                layers.Conv2D(32, 3, activation="relu"),
                layers.MaxPooling2D(2),
                layers.Conv2D(64, 3, activation="relu"),
                layers.MaxPooling2D(2),
                layers.Conv2D(128, 3, activation="relu"),
                layers.GlobalAveragePooling2D(),
                layers.Dense(64, activation="relu"),
                layers.Dense(len(support.CLASSES), activation="softmax"),
            ]
        )
    model.save(path)
    return path


def bare_ips(model_path: Path, images: list[bytes], contract: InputContract, batch_size: int) -> float:
    """Images per second of the compiled forward pass alone (decoding not timed)."""
    from modelstore.loading import load_keras_model
    from worker.model_cache import compile_forward

    tensors = np.stack(
        [
            preprocess(decode_image(d, max_bytes=1 << 26, max_pixels=60_000_000).pixels, contract)
            for d in images
        ]
    )
    forward = compile_forward(load_keras_model(model_path), contract.shape)
    forward(tensors[:batch_size])  # trace once, as the worker's warm-up does
    started = time.perf_counter()
    for start in range(0, len(tensors), batch_size):
        forward(tensors[start : start + batch_size])
    return len(tensors) / (time.perf_counter() - started)


@contextmanager
def bench_services(workdir: Path) -> Iterator[Settings]:
    """S3 server, scratch PostgreSQL database and a Redis key prefix, all removed afterwards."""
    import redis

    server = services.start_s3_server(workdir / "s3")
    pg_url = services.create_pg_database()
    redis_url = services.check_redis()
    settings = Settings(
        data_dir=workdir / "data",
        database_url=pg_url,
        storage_url=f"s3://cxr-bench-{secrets.token_hex(3)}/store",
        s3_endpoint_url=server.endpoint,
        s3_access_key_id=server.access_key,
        s3_secret_access_key=server.secret_key,
        broker_url=redis_url,
        broker_key_prefix=f"cxr-bench-{secrets.token_hex(3)}:",
    )
    try:
        from cxr.core.storage.s3 import S3Store, make_s3_client

        S3Store(settings.storage_url.split("/")[2], "", make_s3_client(settings)).ensure_bucket()
        upgrade(settings=settings)
        yield settings
    finally:
        dispose_engines()
        services.drop_pg_database(pg_url)
        services.stop_process(server.process)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{settings.broker_key_prefix}*"):
            client.delete(key)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def distinct(images: list[bytes], i: int) -> bytes:
    """The i-th image of a repeated set, made byte-distinct by a trailer decoders ignore: the worker
    skips bytes a model version has already scored, so repeats would measure skipping, not scoring."""
    return images[i % len(images)] + b"\0cxr-bench-" + str(i).encode()


def run_job(
    settings: Settings,
    model: dict[str, Any],
    uris: list[str],
    chunk_size: int,
    on_progress: Callable[[int], None],
) -> float:
    """Send ``uris`` in chunks of ``chunk_size`` and wait until every image is counted."""
    job_id = support.create_job(settings, model, total=len(uris))
    app = make_app(settings)
    started = time.perf_counter()
    for seq, start in enumerate(range(0, len(uris), chunk_size)):
        kwargs = {
            "job_id": job_id,
            "model": model,
            "uris": uris[start : start + chunk_size],
            "chunk_seq": seq,
        }
        app.send_task(CLASSIFY_CHUNK, kwargs=kwargs)
    while True:
        with session_scope(settings) as session:
            job = session.get(Job, job_id)
            done = job.scored + job.skipped + job.failed
        on_progress(done)
        if done >= len(uris):
            break
        time.sleep(0.2)
    app.close()
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from modelstore import open_model_store

    workdir = services.scratch_dir("bench")
    contract = CONTRACTS[args.model](args.image_size)
    images = support.sample_images(min(args.images, 256))
    try:
        model_path = build_model(args.model, contract, workdir / "model.keras")
        bare = bare_ips(
            model_path, [images[i % len(images)] for i in range(args.images)], contract, args.batch_size
        )
        log.info("bare: %.1f images/s", bare)
        with bench_services(workdir) as settings:
            settings = settings.model_copy(update={"inference_batch_size": args.batch_size})
            manifest = open_model_store(settings).publish(
                "bench", model_path, architecture=args.model, classes=support.CLASSES,
                input_contract=contract, output="softmax",
            )  # fmt: skip
            model = {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256}
            bucket = open_store(settings.storage_url.rsplit("/", 1)[0], settings)
            n = args.images  # three byte-distinct sets, so no run skips what another scored
            warm = [bucket.put(f"warm/{i}.img", distinct(images, 2 * n + i)) for i in range(args.batch_size)]
            uris = [bucket.put(f"images/{i}.img", distinct(images, i)) for i in range(n)]
            naive_uris = [bucket.put(f"naive/{i}.img", distinct(images, n + i)) for i in range(n)]
            log_path = workdir / "worker.log"
            process = support.start_worker(settings, workdir / "worker-data", log_path)
            rss: dict[int, float | None] = {500: None, 5000: None}

            def watch(done: int) -> None:
                for mark in rss:
                    if rss[mark] is None and done >= mark:
                        rss[mark] = round(rss_mb(process.pid), 1)

            try:
                while not support.worker_ready(log_path):
                    if process.poll() is not None:
                        raise RuntimeError(f"worker exited; see {log_path}")
                    time.sleep(0.3)
                run_job(settings, model, warm, args.batch_size, lambda _: None)  # model load, graph trace
                e2e = args.images / run_job(settings, model, uris, args.chunk_size, watch)
                log.info("e2e: %.1f images/s", e2e)
                naive = args.images / run_job(settings, model, naive_uris, 1, lambda _: None)
                log.info("naive: %.1f images/s", naive)
            finally:
                services.stop_process(process)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "model": args.model,
        "image_size": args.image_size,
        "images": args.images,
        "bare_ips": round(bare, 2),
        "e2e_ips": round(e2e, 2),
        "naive_ips": round(naive, 2),
        "e2e_over_bare": round(e2e / bare, 3),
        "e2e_over_naive": round(e2e / naive, 3),
        "rss_mb_500": rss[500],
        "rss_mb_5000": rss[5000],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", choices=sorted(CONTRACTS), default="mobilenetv2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=64, help="images per measurement (keep it small)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
