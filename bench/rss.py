"""Worker memory over thousands of hospital-sized films: does resident memory stay flat?

    python -m bench.rss --images 5000 --block 500 --out bench/results/rss-fullres.json

A real ``celery -A worker worker`` (prefork, one process per core, as in production) scores the
full-resolution archive (``bench/corpus.py``: every format, 2000-3000 px) in jobs of ``--block``
films sent through Redis, with results in PostgreSQL and the model from the S3 model store, until
``--images`` films are scored. After each block the resident memory of the worker's whole process
tree is read from /proc. Growth is reported from the first block (after the model is loaded and
every decoder has run) to the last: a leak per film, or heap fragmentation from 10 MB pixel
buffers, shows as a slope.

The worker skips bytes a model version has already scored, so every film is made byte-distinct
(``throughput.distinct``); 5,000 distinct full-size films are 40 GB, so each block's films are
written as local files (``file://`` URIs, which the worker's fetcher reads as it reads S3) and
deleted once scored. Memory, not speed, is measured: other work on the machine does not change
the figures, only how long the run takes.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from bench.throughput import (
    CONTRACTS,
    bench_services,
    build_model,
    distinct,
    fullres_images,
    process_tree,
    rss_mb,
    run_job,
    running_worker,
)
from tests import services
from tests import worker_support as support
from worker.lifecycle import available_cores

log = logging.getLogger("bench.rss")


def write_block(folder: Path, images: list[bytes], first: int, count: int) -> list[str]:
    """``count`` byte-distinct films as files, their ``file://`` URIs."""
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for i in range(first, first + count):
        path = folder / f"{i}.img"
        path.write_bytes(distinct(images, i))
        uris.append(path.resolve().as_uri())
    return uris


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from modelstore import open_model_store

    workdir = services.scratch_dir("bench-rss")
    contract = CONTRACTS[args.model](args.image_size)
    processes = args.worker_processes or available_cores()
    blocks: list[dict[str, float]] = []
    try:
        images = fullres_images(workdir / "fullres", args.fullres_per_format, args.formats)
        model_path = build_model(args.model, contract, workdir / "model.keras")
        with bench_services(workdir) as (settings, _s3_pid):
            manifest = open_model_store(settings).publish(
                "bench", model_path, architecture=args.model, classes=support.CLASSES,
                input_contract=contract, output="softmax",
            )  # fmt: skip
            model = {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256}
            pool = "prefork" if processes > 1 else "solo"
            with running_worker(settings, workdir, "worker", pool=pool, concurrency=processes) as worker:
                scored = 0
                started = time.perf_counter()
                while scored < args.images:
                    count = min(args.block, args.images - scored)
                    folder = workdir / "films" / str(len(blocks))
                    uris = write_block(folder, images, scored, count)
                    seconds = run_job(settings, model, uris, args.chunk_size)
                    shutil.rmtree(folder)
                    scored += count
                    rss = round(rss_mb(worker.pid), 1)
                    blocks.append(
                        {"scored": scored, "rss_mb": rss, "images_per_s": round(count / seconds, 2)}
                    )
                    log.info(
                        "%d films scored, worker RSS %.1f MB (%d processes), %.2f films/s",
                        scored, rss, len(process_tree(worker.pid)), count / seconds,
                    )  # fmt: skip
                minutes = (time.perf_counter() - started) / 60
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    first, last = blocks[0]["rss_mb"], blocks[-1]["rss_mb"]
    return {
        "model": args.model,
        "image_size": args.image_size,
        "corpus": "fullres",
        "films_per_format": args.fullres_per_format,
        "formats": args.formats or "all",
        "images": args.images,
        "block": args.block,
        "worker_processes": processes,
        "minutes": round(minutes, 1),
        "rss_mb_first_block": first,
        "rss_mb_last_block": last,
        "rss_mb_max": max(block["rss_mb"] for block in blocks),
        "rss_growth": round(last / first - 1, 4),
        "blocks": blocks,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", choices=sorted(CONTRACTS), default="mobilenetv2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--block", type=int, default=500, help="films per job; RSS is read after each")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--fullres-per-format", type=int, default=2)
    parser.add_argument("--formats", nargs="*", help="only these formats (default: all)")
    parser.add_argument("--worker-processes", type=int, default=0, help="0: one per core")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = measure(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "blocks"}, indent=2))


if __name__ == "__main__":
    main()
