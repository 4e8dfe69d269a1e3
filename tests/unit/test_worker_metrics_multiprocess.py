"""The bookkeeping of one metrics port per worker (multiprocess mode), on real files and real
processes: stale files go at start, a dead process's live gauges go, its counters stay."""

from __future__ import annotations

import os
import subprocess
import sys

from worker import metrics


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_prepare_removes_every_file_but_this_process_s(tmp_path):
    own = os.getpid()
    for name in (f"counter_{own}.db", "counter_17.db", "histogram_17.db", "gauge_livesum_18.db"):
        (tmp_path / name).write_bytes(b"x")
    assert metrics.prepare_multiprocess_dir(tmp_path) == 3
    assert [p.name for p in tmp_path.iterdir()] == [f"counter_{own}.db"]


def test_a_dead_process_loses_its_live_gauges_and_keeps_its_counts(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    for pid in (dead, alive):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"x")
        (tmp_path / f"counter_{pid}.db").write_bytes(b"x")
    assert metrics.forget_dead_processes(tmp_path) == [dead]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"counter_{dead}.db", f"counter_{alive}.db", f"gauge_livesum_{alive}.db"])


def test_pool_process_collector_reports_each_process_with_its_pid():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        families = {f.name: f for f in metrics.PoolProcessCollector().collect()}
        pids = {s.labels["pid"] for s in families["process_resident_memory_bytes"].samples}
        assert {str(os.getpid()), str(child.pid)} <= pids
        assert all(s.value > 0 for s in families["process_resident_memory_bytes"].samples)
    finally:
        child.kill()
        child.wait()
