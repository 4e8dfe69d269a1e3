"""Every Prometheus series the worker exports, in one place, and the per-process endpoint.

Labels stay low-cardinality: model name, version, outcome, predicted class, failing stage. Never an
image, a job id or a URI. Under the prefork pool each child serves its own port (base + pool
index), so no two processes bind the same port and no multiprocess directory is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from cxr.core.outcomes import Outcome

if TYPE_CHECKING:
    from modelstore import ResolvedModel
    from modelstore.runtime import ModelRuntime

log = logging.getLogger(__name__)

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
    MODEL_INFO.remove(name, str(version), sha256)


def start_metrics_server(base_port: int, process_index: int | None) -> int | None:
    """Serve /metrics on ``base_port + process_index``; 0 disables. Returns the port or None."""
    if base_port <= 0:
        return None
    port = base_port + (process_index or 0)
    try:
        start_http_server(port)
    except OSError as exc:  # a port in use must not kill the worker: it can still score
        log.error("cannot serve metrics on port %d: %s", port, exc)
        return None
    log.info("serving Prometheus metrics on port %d", port)
    return port
