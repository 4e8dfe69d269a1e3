"""Scoring throughput: bare model vs the whole worker path vs one task per image.

    python -m bench.throughput --model mobilenetv2 --images 64 --json
    python -m bench.throughput --corpus fullres --fullres-per-format 2 --images 48 --json

``--corpus fullres`` scores hospital-sized films (``bench/corpus.py``) instead of the shipped
sample; ``bench/decode_cost.py`` gives their decode cost per format against the forward pass.

(a) bare:  the compiled forward pass on already decoded and preprocessed tensors, in one process
           with TensorFlow's default threads, at the fastest of ``--bare-batch-sizes``;
(a') the same bare pass in the worker's process layout: as many processes as the worker has
           (``--worker-processes``, default one per core), each with cores ÷ processes threads,
           also at its fastest batch size (``bench/bare.py``);
(b) e2e:   chunks sent through Redis to a real ``celery -A worker worker`` (prefork, one process
           per core, or ``-P solo`` for one) that fetches from an S3 server, decodes, infers and
           writes to PostgreSQL;
(c) naive: the seeds' pattern on the same services: one task per image, one ``model.predict``
           per image, one committed row per image (``bench/naive_worker.py``).

Measurements run in interleaved rounds and medians are reported, because this machine's speed
drifts; ``predict_ips`` (``model.predict`` per batch) is printed for reference. During (b) the
CPU time of the worker's processes, of the S3 server and of the whole machine is read from
/proc and reported per image, which says where the time goes.

The services are the test suite's (``tests/services.py``): a SeaweedFS S3 server started here,
the local PostgreSQL (a scratch database) and Redis (a unique key prefix). The model has random
weights: throughput does not depend on them. Keep ``--images`` small on shared machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from bench.bare import layout_sweep, make_forward, sweep
from bench.naive_worker import NAIVE_QUEUE, NAIVE_TASK
from cxr.core.db.migrate import upgrade
from cxr.core.db.models import Job, Prediction
from cxr.core.db.session import dispose_engines, session_scope
from cxr.core.imaging import InputContract, decode_image, preprocess
from cxr.core.imaging.decode import is_dicom
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from tests import services
from tests import worker_support as support
from worker.app import CLASSIFY_CHUNK, make_app
from worker.lifecycle import available_cores, inference_threads

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


def fullres_images(folder: Path, per_format: int, formats: list[str] | None = None) -> list[bytes]:
    """The full-resolution archive (``bench/corpus.py``), every format (or ``formats``)
    interleaved."""
    import csv

    from bench.corpus import write_corpus

    with write_corpus(folder, per_format, formats=formats).open() as stream:
        return [(folder / row["path"]).read_bytes() for row in csv.DictReader(stream)]


def prepare_tensors(images: list[bytes], contract: InputContract) -> np.ndarray:
    decoded = [
        decode_image(data, max_bytes=1 << 26, max_pixels=60_000_000, target_side=contract.decode_side)
        for data in images
    ]
    return np.stack([preprocess(image.pixels, contract) for image in decoded])


def predict_ips(model_path: Path, tensors: np.ndarray, batch_size: int) -> float:
    """``model.predict`` per batch, for reference: its per-call overhead is what (a) avoids."""
    from modelstore.loading import load_keras_model

    model = load_keras_model(model_path)
    model.predict(tensors[:batch_size], verbose=0)
    started = time.perf_counter()
    for start in range(0, len(tensors), batch_size):
        model.predict(tensors[start : start + batch_size], verbose=0)
    return len(tensors) / (time.perf_counter() - started)


@contextmanager
def bench_services(workdir: Path) -> Iterator[tuple[Settings, int]]:
    """S3 server, scratch PostgreSQL database and a Redis key prefix, all removed afterwards;
    yields the settings that point at them and the S3 server's pid."""
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
        yield settings, server.process.pid
    finally:
        dispose_engines()
        services.drop_pg_database(pg_url)
        services.stop_process(server.process)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{settings.broker_key_prefix}*"):
            client.delete(key)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a prefork worker's parent and children), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # exited while we looked
                continue
    tree = [pid]
    for member in tree:
        tree += [child for child, parent in parents.items() if parent == member]
    return tree


def rss_mb(pid: int) -> float:
    """Resident memory of a worker: its parent and every pool process."""
    total = 0.0
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


_TICKS = os.sysconf("SC_CLK_TCK")
CPU_PARTS = ("worker", "s3_server", "machine", "stolen")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (their finished threads included)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def machine_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine has spent busy (all cores; idle, iowait and steal excluded)
    and stolen by the hypervisor (time this virtual machine wanted a core and did not get it)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq) / _TICKS, steal / _TICKS


def distinct(images: list[bytes], i: int) -> bytes:
    """The i-th image of a repeated set, made byte-distinct by a trailer decoders ignore: the worker
    skips bytes a model version has already scored, so repeats would measure skipping, not scoring.
    A DICOM file's trailer would be read as a data element: its 128-byte preamble carries the mark."""
    data, mark = images[i % len(images)], b"\0cxr-bench-" + str(i).encode()
    if is_dicom(data):
        return mark.ljust(128, b"\0") + data[128:]
    return data + mark


def wait_until(count: Callable[[], int], target: int, on_progress: Callable[[int], None]) -> None:
    while (done := count()) < target:
        on_progress(done)
        time.sleep(0.1)
    on_progress(done)


def job_done(settings: Settings, job_id: str) -> int:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        return job.scored + job.skipped + job.failed


def predictions_of(settings: Settings, job_id: str) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(Prediction).where(Prediction.job_id == job_id))


def run_job(
    settings: Settings,
    model: dict[str, Any],
    uris: list[str],
    chunk_size: int,
    on_progress: Callable[[int], None] = lambda _: None,
) -> float:
    """Send ``uris`` to the real worker in chunks; seconds until every image is counted."""
    job_id = support.create_job(settings, model, total=len(uris))
    app = make_app(settings)
    started = time.perf_counter()
    for seq, start in enumerate(range(0, len(uris), chunk_size)):
        chunk = uris[start : start + chunk_size]
        kwargs = {"job_id": job_id, "model": model, "uris": chunk, "chunk_seq": seq}
        app.send_task(CLASSIFY_CHUNK, kwargs=kwargs)
    wait_until(lambda: job_done(settings, job_id), len(uris), on_progress)
    app.close()
    return time.perf_counter() - started


def run_naive(settings: Settings, model: dict[str, Any], uris: list[str]) -> float:
    """One task per image to the seeds-style worker; seconds until every prediction is stored."""
    job_id = support.create_job(settings, model, total=len(uris))
    app = make_app(settings)
    started = time.perf_counter()
    for uri in uris:
        app.send_task(NAIVE_TASK, kwargs={"job_id": job_id, "model": model, "uri": uri}, queue=NAIVE_QUEUE)
    wait_until(lambda: predictions_of(settings, job_id), len(uris), lambda _: None)
    app.close()
    return time.perf_counter() - started


@contextmanager
def cpu_per_image(worker_pids: list[int], s3_server_pid: int, images: int) -> Iterator[dict[str, float]]:
    """CPU milliseconds per image spent, while the block runs, by the worker's processes, the S3
    server and the whole machine (which adds PostgreSQL, Redis, this process and the kernel),
    and stolen from this virtual machine by its host (a noisy neighbour shows there)."""

    def now() -> tuple[float, ...]:
        return cpu_seconds(worker_pids), cpu_seconds([s3_server_pid]), *machine_seconds()

    spent: dict[str, float] = {}
    before = now()
    yield spent
    after = now()
    for part, start, end in zip(CPU_PARTS, before, after, strict=True):
        spent[part] = 1000 * (end - start) / images


@contextmanager
def running_worker(settings: Settings, workdir: Path, name: str, **kwargs: Any) -> Iterator[Any]:
    log_path = workdir / f"{name}.log"
    process = support.start_worker(settings, workdir / f"{name}-data", log_path, **kwargs)
    try:
        support.wait_for(lambda: support.worker_ready(log_path), 120, f"{name} worker", process, log_path)
        yield process
    finally:
        services.stop_process(process)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of (a) bare, (b) end to end and (c) seeds-style, interleaved: this machine's speed
    drifts, so each ratio compares measurements taken seconds apart, and the medians are reported."""
    from modelstore import open_model_store

    workdir = services.scratch_dir("bench")
    contract = CONTRACTS[args.model](args.image_size)
    images = (
        support.sample_images(min(args.images, 256))
        if args.corpus == "dev"
        else fullres_images(workdir / "fullres", args.fullres_per_format, args.formats)
    )
    n, m, rounds = args.images, args.naive_images, args.rounds
    processes = args.worker_processes
    rows: list[dict[str, float]] = []
    by_batch_rows: list[tuple[dict[int, float], dict[int, float]]] = []
    rss: dict[int, float | None] = {500: None, 5000: None}
    try:
        model_path = build_model(args.model, contract, workdir / "model.keras")
        tensors = prepare_tensors(images, contract)  # distinct ones, cycled by the bare loops
        forward = make_forward(model_path, args.batch_size)
        predict = predict_ips(model_path, tensors, args.batch_size)
        sizes = sorted({*args.bare_batch_sizes, args.batch_size})
        with bench_services(workdir) as (settings, s3_server_pid):
            settings = settings.model_copy(
                update={
                    "inference_batch_size": args.batch_size,
                    "decode_threads": args.decode_threads,
                    "decode_niceness": args.decode_niceness,
                    "inference_threads": args.inference_threads,
                }
            )
            threads = inference_threads(settings, processes, available_cores())
            manifest = open_model_store(settings).publish(
                "bench", model_path, architecture=args.model, classes=support.CLASSES,
                input_contract=contract, output="softmax",
            )  # fmt: skip
            model = {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256}
            bucket = open_store(settings.storage_url.rsplit("/", 1)[0], settings)
            serial = iter(range(10**9))  # every uploaded image byte-distinct from every other

            def upload(prefix: str, count: int) -> list[str]:
                return [bucket.put(f"{prefix}/{i}.img", distinct(images, next(serial))) for i in range(count)]

            # Two warm-up chunks per pool process, so that every process has loaded the model.
            warm, naive_warm = upload("warm", 2 * processes * args.batch_size), upload("naive-warm", 2)
            e2e_sets = [upload(f"e2e{r}", n) for r in range(rounds)]
            naive_sets = [upload(f"naive{r}", m) for r in range(rounds)]
            log.info("uploaded %d images", next(serial))
            with (
                running_worker(
                    settings,
                    workdir,
                    "worker",
                    pool="prefork" if processes > 1 else "solo",
                    concurrency=processes,
                ) as worker,  # fmt: skip
                running_worker(settings, workdir, "naive", app="bench.naive_worker", queue=NAIVE_QUEUE),
            ):
                run_job(settings, model, warm, args.batch_size)  # model load and graph trace
                run_naive(settings, model, naive_warm)
                scored_before = 0

                def watch(done: int) -> None:
                    for mark in rss:
                        if rss[mark] is None and scored_before + done >= mark:
                            rss[mark] = round(rss_mb(worker.pid), 1)

                for r in range(rounds):
                    by_batch = sweep(forward, tensors, sizes, args.bare_images)
                    layout_by_batch = by_batch
                    if processes > 1:
                        layout_by_batch = layout_sweep(
                            model_path, tensors, sizes, processes, threads, args.bare_images, workdir
                        )
                    bare, layout = max(by_batch.values()), max(layout_by_batch.values())
                    with cpu_per_image(process_tree(worker.pid), s3_server_pid, n) as cpu:
                        e2e = n / run_job(settings, model, e2e_sets[r], args.chunk_size, watch)
                    scored_before += n
                    naive = m / run_naive(settings, model, naive_sets[r])
                    row = {"bare_ips": bare, "bare_layout_ips": layout, "e2e_ips": e2e, "naive_ips": naive}
                    rows.append(row | {f"{part}_cpu_ms": ms for part, ms in cpu.items()})
                    by_batch_rows.append((by_batch, layout_by_batch))
                    log.info(
                        "round %d: bare %.1f, bare as %d×%d threads %.1f, e2e %.1f, naive %.1f images/s; "
                        "CPU ms per image in (b): %s",
                        r + 1, bare, processes, threads, layout, e2e, naive,
                        ", ".join(f"{part} {ms:.1f}" for part, ms in cpu.items()),
                    )  # fmt: skip
            if args.worker_log:
                shutil.copy(workdir / "worker.log", args.worker_log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def median(values: list[float]) -> float:
        return round(float(np.median(values)), 3)

    return {
        "model": args.model,
        "corpus": args.corpus,
        "formats": args.formats or "all",
        "image_size": args.image_size,
        "images": n,
        "naive_images": m,
        "rounds": rounds,
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "decode_threads": args.decode_threads,
        "decode_niceness": args.decode_niceness,
        "worker_processes": processes,
        "inference_threads": threads,
        "cores": available_cores(),
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "bare_ips": median([row["bare_ips"] for row in rows]),
        "bare_layout_ips": median([row["bare_layout_ips"] for row in rows]),
        "bare_ips_by_batch": {size: median([one[size] for one, _ in by_batch_rows]) for size in sizes},
        "bare_layout_ips_by_batch": {size: median([lay[size] for _, lay in by_batch_rows]) for size in sizes},
        "e2e_ips": median([row["e2e_ips"] for row in rows]),
        "naive_ips": median([row["naive_ips"] for row in rows]),
        "predict_ips": round(predict, 2),
        "e2e_over_bare": median([row["e2e_ips"] / row["bare_ips"] for row in rows]),
        "e2e_over_bare_layout": median([row["e2e_ips"] / row["bare_layout_ips"] for row in rows]),
        "e2e_over_naive": median([row["e2e_ips"] / row["naive_ips"] for row in rows]),
        "e2e_cpu_ms_per_image": {part: median([row[f"{part}_cpu_ms"] for row in rows]) for part in CPU_PARTS},
        "rss_mb_500": rss[500],
        "rss_mb_5000": rss[5000],
        "rss_growth": round(rss[5000] / rss[500] - 1, 4) if rss[500] and rss[5000] else None,
        "per_round": [{key: round(value, 2) for key, value in row.items()} for row in rows],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", choices=sorted(CONTRACTS), default="mobilenetv2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--corpus", choices=("dev", "fullres"), default="dev",
        help="dev: the shipped sample films (≤ 511 px); fullres: bench/corpus.py's 2,000–3,000 px "
        "archive (JPEG, 16-bit PNG/TIFF, 12-bit DICOM variants)",
    )  # fmt: skip
    parser.add_argument("--fullres-per-format", type=int, default=2, help="films per format (fullres)")
    parser.add_argument("--formats", nargs="*", help="fullres: only these formats (default: all)")
    parser.add_argument("--images", type=int, default=64, help="images per round for (a) and (b)")
    parser.add_argument("--naive-images", type=int, default=32, help="images per round for (c)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--bare-batch-sizes", type=lambda text: [int(size) for size in text.split(",")],
        default=[4, 8, 16, 32],
        help="batch sizes tried for (a) and (a'); the fastest of each is the reference",
    )  # fmt: skip
    parser.add_argument("--bare-images", type=int, default=512, help="images per batch size for (a) and (a')")
    parser.add_argument(
        "--worker-processes", type=int, default=available_cores(),
        help="pool processes of the worker under test (prefork; 1: -P solo); default one per core",
    )  # fmt: skip
    tuned = ("inference_batch_size", "chunk_size", "decode_threads", "decode_niceness", "inference_threads")
    for option in tuned:
        flag = "--batch-size" if option == "inference_batch_size" else f"--{option.replace('_', '-')}"
        parser.add_argument(flag, type=int, default=Settings.model_fields[option].default)
    parser.add_argument("--worker-log", type=Path, help="keep the worker's log here")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.batch_size = Settings(inference_batch_size=args.batch_size).batch_size_for(model_on_cpu=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = measure(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
