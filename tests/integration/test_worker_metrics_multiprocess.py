"""One metrics port for a whole prefork worker (prometheus_client multiprocess mode): a real
Prometheus scrapes a real ``celery worker -c 2`` through its single port and sees the counts of
both children, none of a stale file an earlier run left, and each process's memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from tests import prometheus_support as prom
from tests import services
from tests import worker_support as support
from tests.integration.test_scheduler_celery import cxr, finish, publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCORED = "cxr_images_scored_total"


def stale_counter(directory: Path, pid: int, value: float) -> None:
    """A counter file as a previous container run would have left it."""
    stale = MmapedDict(str(directory / f"counter_{pid}.db"))
    labels = {"model": "mp", "version": "1", "outcome": "scored", "class": "normal", "stage": ""}
    key = mmap_key("cxr_images_scored", SCORED, list(labels), list(labels.values()), "stale")
    stale.write_value(key, value, 0.0)
    stale.close()


def scored_per_pid(directory: Path) -> dict[int, float]:
    """Images counted per process, read straight from the multiprocess files."""
    counts: dict[int, float] = defaultdict(float)
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name == SCORED and labels["outcome"] in ("scored", "failed"):
                counts[pid] += value
    return dict(counts)


def test_a_prefork_worker_serves_every_child_through_one_port(cluster_settings, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "mp")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale_pid = 4_000_000  # above any pid_max: never a live process here
    stale_counter(metrics_dir, stale_pid, 1000)

    log_path = tmp_path / "worker.log"
    env = support.worker_env(settings, tmp_path / "worker-data")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "gpu", "-P", "prefork",
               "-c", "2", "-l", "INFO", "-n", "mp@%h",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            command, cwd=support.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    port = settings.metrics_port
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "w", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }
    prometheus = None
    try:
        support.wait_for(lambda: support.worker_ready(log_path), 90, "worker ready", worker, log_path)
        assert not (metrics_dir / f"counter_{stale_pid}.db").exists()  # wiped at start
        prometheus = prom.start_prometheus(config, tmp_path / "prometheus")
        support.wait_for(lambda: prometheus.values("up") == [1.0], 30, "the one port scraped")

        archive = tmp_path / "archive"
        archive.mkdir()
        for seed in range(16):
            (archive / f"img{seed:02d}.png").write_bytes(support.synthetic_png(seed, size=(48, 48)))
        (archive / "broken.png").write_bytes(support.CORRUPT)
        summary = finish(cxr(settings, tmp_path / "cli", "score", str(archive), "--model", "mp@production",
                             "--chunk-size", "1", "--wait", "--json"))  # fmt: skip
        assert (summary["scored"], summary["failed"]) == (16, 1)

        per_pid = scored_per_pid(metrics_dir)
        children = {pid: n for pid, n in per_pid.items() if n > 0}
        assert len(children) == 2, per_pid  # both children scored, each in its own file
        assert sum(children.values()) == 17

        total = 'sum(cxr_images_scored_total{outcome=~"scored|failed"})'
        support.wait_for(lambda: prometheus.values(total) == [17.0], 30, "both children's counts scraped")
        assert prometheus.values('sum(cxr_images_scored_total{outcome="failed", stage="decode"})') == [1.0]
        assert prometheus.values("sum(cxr_model_info)") == [2.0]  # loaded in both live children
        memory = prometheus.query("process_resident_memory_bytes")["data"]["result"]
        pids = {sample["metric"]["pid"] for sample in memory}
        assert {str(worker.pid), *map(str, children)} <= pids
        time.sleep(1)
    finally:
        if prometheus is not None:
            services.stop_process(prometheus.process)
        services.stop_process(worker)
