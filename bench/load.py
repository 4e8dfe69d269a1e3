"""Load: one job of N images on two worker processes, with exact counts at the end.

    python -m bench.load --images 10000 --workers 2 --json-out load.json

Synthetic gray PNGs (distinct bytes, so none is skipped as a duplicate) are written to a local
folder archive, a tiny model is published to the S3 model store, ``cxr score`` submits the job
through Redis, and ``--workers`` solo Celery workers score it into PostgreSQL. The job must end
with every image scored exactly once: total = scored, one prediction and one job_images row per
image. Reported: images/s over the whole job (submission to last chunk) and each worker's peak
RSS (``VmHWM`` from /proc, read just before it is stopped).

The services are the test suite's (``bench.throughput.bench_services``). Keep ``--images``
small on shared machines; the test suite runs this with 300.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cxr.core.db.models import JobImage, Prediction
from cxr.core.settings import Settings
from modelstore import open_model_store
from tests import fault_support as faults
from tests import services
from tests import worker_support as support

MODEL_NAME = "load"


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of a process (``VmHWM``), in MiB; psutil is not needed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _count(settings: Settings, job_id: str) -> dict[str, int]:
    from cxr.core.db.session import session_scope

    with session_scope(settings) as session:
        predictions = session.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.model_name == MODEL_NAME)
        )
        rows = session.scalar(select(func.count()).select_from(JobImage).where(JobImage.job_id == job_id))
    return {"predictions": int(predictions), "job_images": int(rows)}


def run_load(
    settings: Settings, workdir: Path, images: int, chunk_size: int = 100, workers: int = 2
) -> dict[str, Any]:
    """Score ``images`` synthetic images with ``workers`` worker processes; returns the figures.

    Raises AssertionError if any count is not exact.
    """
    archive = workdir / "archive"
    faults.write_archive(archive, images, size=(64, 64), seed=10_000)
    open_model_store(settings).publish(
        MODEL_NAME, support.build_model(workdir / "load.keras"), architecture="tiny_cnn",
        classes=support.CLASSES, input_contract=support.CONTRACT, output="softmax", aliases=["production"],
    )  # fmt: skip
    processes, logs = [], []
    try:
        for n in range(workers):
            logs.append(workdir / f"worker-{n}.log")
            processes.append(support.start_worker(settings, workdir / f"worker-{n}", logs[-1]))
        for process, log_path in zip(processes, logs, strict=True):
            ready = lambda p=log_path: support.worker_ready(p)  # noqa: E731
            support.wait_for(ready, 120, "worker ready", process, log_path)
        started = time.perf_counter()
        model_ref = f"{MODEL_NAME}@production"
        job_id = faults.submit_job(settings, workdir / "cli", str(archive), model_ref, chunk_size)
        while faults.job_status(settings, job_id) != "finished":
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        peaks = [round(peak_rss_mb(process.pid), 1) for process in processes]
    finally:
        for process in processes:
            services.stop_process(process)
    job = faults.assert_exactly_once(settings, job_id, MODEL_NAME, images)
    counts = _count(settings, job_id)
    assert (job.scored, job.skipped, job.failed) == (images, 0, 0), (job.scored, job.skipped, job.failed)
    assert counts == {"predictions": images, "job_images": images}, counts
    return {
        "images": images,
        "workers": workers,
        "chunk_size": chunk_size,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "peak_rss_mb_per_worker": peaks,
        "scored": job.scored,
        "failed": job.failed,
        **counts,
    }


def main(argv: list[str] | None = None) -> None:
    from bench.throughput import bench_services

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--json-out", type=Path, default=Path("load.json"))
    args = parser.parse_args(argv)
    workdir = services.scratch_dir("load")
    with bench_services(workdir) as settings:
        figures = run_load(settings, workdir, args.images, args.chunk_size, args.workers)
    args.json_out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
