"""Every Prometheus series the worker exports, in one place, and the endpoint that serves them.

Labels stay low-cardinality: model name, version, outcome, predicted class, failing stage. Never an
image, a job id or a URI.

Two ways to serve a prefork pool:

- **one port per process** (default): each child serves ``CXR_METRICS_PORT`` + its pool index;
  solo and ``--concurrency 1`` serve the base port alone.
- **one port per worker** (prometheus_client's multiprocess mode), when the worker starts with
  ``PROMETHEUS_MULTIPROC_DIR`` set. prometheus_client reads that variable when it is imported, before
  any setting could be, so it is the library's own switch rather than a ``CXR_*`` setting. Every
  process writes its values to memory-mapped files in that directory; the main process serves
  ``CXR_METRICS_PORT`` and sums them (``MultiProcessCollector``). At start the main process removes
  every file an earlier run left (``prepare_multiprocess_dir``: the directory is per container);
  the files of an exited child stay, since its counts are part of the totals, except its live
  gauges (``mark_process_dead``, at child shutdown and for any dead pid before each scrape).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from cxr.core.outcomes import Outcome

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from modelstore import ResolvedModel
    from modelstore.runtime import ModelRuntime

log = logging.getLogger(__name__)

#: The multiprocess directory, or None for one port per process (prometheus_client's own test).
MULTIPROCESS_DIR: str | None = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
if MULTIPROCESS_DIR:  # the series below write their files here as soon as they are created
    Path(MULTIPROCESS_DIR).mkdir(parents=True, exist_ok=True)

# One label per meaning: ``class`` is set only for scored images, ``stage`` only for failed
# ones (both empty for a skip), so ``sum by (class)`` and ``sum by (stage)`` never mix the two.
IMAGES_SCORED = Counter(
    "cxr_images_scored",
    "Images handled by the worker, by outcome (scored, failed, skipped); class = the predicted "
    "class of a scored image, stage = the FailureStage of a failed one (empty otherwise).",
    ["model", "version", "outcome", "class", "stage"],
)

# A chunk is tens to a few hundred images: well under a second on a GPU, minutes on a busy CPU,
# up to the task's hard limit (30 min by default) when something is wrong.
CHUNK_DURATION = Histogram(
    "cxr_chunk_duration_seconds",
    "Wall time of one classify_chunk task, from start to committed results.",
    buckets=(0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800),
)

# fetch and decode are observed per image (milliseconds from a local disk, up to seconds from a
# slow S3 or for a 4k×4k DICOM); infer per batch (milliseconds on a GPU, tens of seconds for a
# large CNN on CPU); write per chunk (one transaction). One bucket set spans 1 ms to 1 min.
STAGE_DURATION = Histogram(
    "cxr_stage_duration_seconds",
    "Time spent per stage: fetch and decode per image, infer per batch, write per chunk.",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# Batch sizes are configured as powers of two; the last batch of a chunk is smaller, and a
# run of small batches means decoding cannot keep the model busy.
BATCH_SIZE = Histogram(
    "cxr_batch_size",
    "Images per forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

# Loading is a download (once per sha256), deserialisation and one warm-up pass: about a second
# for a small CNN, tens of seconds for VGG19 pulled over a slow link.
MODEL_LOAD_SECONDS = Histogram(
    "cxr_model_load_seconds",
    "Time to pull, load and warm up a model version in a worker process.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)

MODEL_CACHE_HITS = Counter("cxr_model_cache_hits", "Chunks served by a model already in memory.")
MODEL_CACHE_MISSES = Counter("cxr_model_cache_misses", "Chunks that had to load their model first.")
MODEL_INFO = Gauge(
    "cxr_model_info",
    "1 for each model version loaded in this worker process.",
    ["model", "version", "sha256"],
    multiprocess_mode="livesum",  # one port per worker: the processes alive that hold it
)

# Percentiles among the validation split's shift scores: most images of a familiar archive lie
# below 90; the model's threshold (99 by default) is where an image is flagged, and a mass at
# 100 means films farther from the training data than any validation film.
SHIFT_PERCENTILE = Histogram(
    "cxr_shift_percentile",
    "Per image scored: the percentile of its shift score among the validation split's (how "
    "unlike the training data it is), for models that ship a shift reference.",
    ["model", "version"],
    buckets=(50, 75, 90, 95, 99, 99.9, 100),
)

EXPLANATIONS = Counter(
    "cxr_explanations",
    "Images explained by the worker (heatmap, overlay, ROIs written), by method and outcome.",
    ["model", "version", "method", "outcome"],
)

# Models with a lung step (``lung_crop`` box/mask): "used" or why the mask was refused and the
# whole film was used instead (cxr.core.imaging.lungs.FALLBACK_REASONS). A rising fallback share
# means films the segmenter does not know: look at them.
LUNG_MASKS = Counter(
    "cxr_lung_masks",
    "Lung masks the scoring worker's lung step produced, by result: used, or the reason the mask "
    "was refused and the whole film scored instead (area, one_component, not_two_lungs, centroid, "
    "one_side, other).",
    ["model", "version", "result"],
)

STAGES = ("fetch", "decode", "infer", "write", "explain")
for _stage in STAGES:
    STAGE_DURATION.labels(stage=_stage)  # pre-created so dashboards see zeros, not gaps


def model_loaded(name: str, version: int, sha256: str, classes: Iterable[str], seconds: float) -> None:
    """Record a load; pre-create the model's scored counters at zero, one per class, and its
    explanation counters, one per method and outcome (a dashboard then shows 0, not a gap)."""
    from cxr.explain.methods import METHODS  # no TensorFlow: only the registry of names

    MODEL_LOAD_SECONDS.labels(model=name).observe(seconds)
    MODEL_INFO.labels(model=name, version=str(version), sha256=sha256).set(1)
    for label in classes:
        IMAGES_SCORED.labels(name, str(version), Outcome.SCORED.value, label, "")
    for method in METHODS:
        for outcome in ("explained", "failed"):
            EXPLANATIONS.labels(name, str(version), method, outcome)


def count_lung_masks(model: ResolvedModel, before: dict[str, int], after: dict[str, int]) -> None:
    """Count the lung masks one chunk produced: the growth of ``lungs.fallback_counts()``
    between ``before`` and ``after`` (a prefork child runs one chunk at a time)."""
    for result, count in after.items():
        if count > before.get(result, 0):
            LUNG_MASKS.labels(model.name, str(model.version), result).inc(count - before.get(result, 0))


def count_images(model: ResolvedModel, outcome: Outcome, detail: str, n: int = 1) -> None:
    """Count ``n`` images of one outcome: ``detail`` is the predicted class of a scored image
    (label ``class``), the ``FailureStage`` of a failed one (label ``stage``), ignored for a
    skip. Every failure row the worker writes is counted here, including a whole chunk given up
    (``results.give_up_chunk``)."""
    if not n:
        return
    klass = str(detail) if outcome is Outcome.SCORED else ""
    stage = str(detail) if outcome is Outcome.FAILED else ""
    IMAGES_SCORED.labels(model.name, str(model.version), outcome.value, klass, stage).inc(n)


def model_labels(runtime: ModelRuntime) -> tuple[str, str]:
    """(model, version) label values of a runtime loaded from the store."""
    identity = runtime.identity
    return (identity.name, str(identity.version)) if identity else (runtime.ref, "")


def model_evicted(name: str, version: int, sha256: str) -> None:
    # Zero first: a multiprocess file keeps a removed child's last value.
    MODEL_INFO.labels(name, str(version), sha256).set(0)
    MODEL_INFO.remove(name, str(version), sha256)


def start_metrics_server(base_port: int, process_index: int | None) -> int | None:
    """One port per process: serve /metrics on ``base_port + process_index``; 0 disables.
    Returns the port or None."""
    return _serve(base_port + (process_index or 0) if base_port > 0 else 0, registry=None)


def _serve(port: int, registry: CollectorRegistry | None) -> int | None:
    if port <= 0:
        return None
    try:
        if registry is None:
            start_http_server(port)
        else:
            start_http_server(port, registry=registry)
    except OSError as exc:  # a port in use must not kill the worker: it can still score
        log.error("cannot serve metrics on port %d: %s", port, exc)
        return None
    log.info("serving Prometheus metrics on port %d", port)
    return port


# --- one port per worker (multiprocess mode) -----------------------------------------------------


def _file_pid(path: Path) -> int | None:
    """The pid a multiprocess file belongs to (``counter_123.db``, ``gauge_livesum_123.db``)."""
    stem = path.stem.rsplit("_", 1)
    return int(stem[1]) if len(stem) == 2 and stem[1].isdigit() else None


def prepare_multiprocess_dir(directory: str | Path, own_pid: int | None = None) -> int:
    """Remove every file in ``directory`` that is not this process's: what an earlier run of the
    container left, which would otherwise be added to this run's counts. Called by the main process
    before the pool forks. Returns how many files were removed."""
    own_pid = os.getpid() if own_pid is None else own_pid
    removed = 0
    for path in Path(directory).glob("*.db"):
        if _file_pid(path) != own_pid:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process: alive
        return True
    return True


def forget_dead_processes(directory: str | Path) -> list[int]:
    """``mark_process_dead`` for every pid with files in ``directory`` that no longer runs (a child
    killed before its shutdown hook, e.g. by the OOM killer). Returns those pids."""
    from prometheus_client import multiprocess

    pids = {pid for path in Path(directory).glob("gauge_live*.db") if (pid := _file_pid(path))}
    dead = sorted(pid for pid in pids if not _alive(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))
    return dead


def process_exited(pid: int | None = None) -> None:
    """In a pool child at shutdown: drop its live gauges (its counters stay in the totals)."""
    if MULTIPROCESS_DIR:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, MULTIPROCESS_DIR)


def touch_values() -> None:
    """In a freshly forked child: write every series created so far into this process's files,
    at zero, so a scrape shows zeros instead of gaps before its first task."""
    if MULTIPROCESS_DIR:
        BATCH_SIZE._sum.get()  # any value: the first access after a fork re-creates all of them


def _children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (the pool children), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return sorted(pids)


class PoolProcessCollector:
    """``process_*`` of the main process and of every pool child, one ``pid`` label each: the
    memory and CPU of each process, as one port per process would show them."""

    def collect(self) -> Iterator[object]:
        from prometheus_client import ProcessCollector
        from prometheus_client.metrics_core import Metric

        merged: dict[str, Metric] = {}
        own = os.getpid()
        for pid in [own, *_children(own)]:
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for family in collector.collect():
                new = Metric(family.name, family.documentation, family.type)
                target = merged.setdefault(family.name, new)
                for sample in family.samples:
                    target.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from merged.values()


class _DeadProcessSweep:
    """Forgets dead processes' live gauges just before ``MultiProcessCollector`` reads the files."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[object]:
        forget_dead_processes(self.directory)
        return iter(())


def start_worker_metrics_server(base_port: int) -> int | None:
    """One port per worker: in the main process, before the pool forks, serve the sum of every
    process's files on ``base_port``. Returns the port, or None when disabled or not in
    multiprocess mode."""
    if not MULTIPROCESS_DIR or base_port <= 0:
        return None
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, CollectorRegistry, multiprocess

    removed = prepare_multiprocess_dir(MULTIPROCESS_DIR)
    log.info("metrics of every pool process on one port; %d stale files removed", removed)
    registry = CollectorRegistry()
    registry.register(_DeadProcessSweep(MULTIPROCESS_DIR))  # registered first: collected first
    multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
    registry.register(PoolProcessCollector())
    registry.register(PLATFORM_COLLECTOR)
    registry.register(GC_COLLECTOR)  # the main process's collector
    return _serve(base_port, registry)
