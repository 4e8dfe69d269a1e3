"""The batched inference engine: URIs in, per-image probabilities, skips or failures out.

Fetch, hash, decode and preprocess run in a small thread pool (``decode_threads``) while the
model runs: the engine keeps at most two batches of images in flight ahead of the model, so
batch k+1 decodes while batch k is in the forward pass, and memory stays bounded whatever the
chunk size. Pillow, boto3 and TensorFlow all release the GIL in their heavy parts.

One bad file costs one file. Whatever one image raises while it is fetched, hashed, decoded or
preprocessed (an ``ImageError`` with its reason, or anything a third-party decoder throws:
struct, zlib, OSError, IndexError, MemoryError...) becomes that image's ``ImageFailure`` with its
stage and a one-line reason, and the rest of the chunk is scored; an image that takes longer
than ``decode_timeout_s`` fails the same way. A policy decision (a lateral view) is a
``SkippedImage`` with its reason, not a failure. Only a transient error (storage unreachable)
propagates, so the task retries the whole chunk; results are idempotent, so that costs only time.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from cxr.core.errors import ImageError, TransientError
from cxr.core.imaging import decode_image
from cxr.core.imaging.decode import no_contrast
from cxr.core.imaging.dicom_policy import DicomPolicy, ImageSkipped
from cxr.core.outcomes import FailureStage, SkipReason, one_line
from cxr.core.privacy import DICOM_HASHED_COLUMNS, hash_identifier
from cxr.core.settings import Settings
from cxr.core.storage.fetch import ObjectFetcher
from modelstore.runtime import ModelRuntime
from worker import metrics
from worker.lifecycle import model_on_cpu, process_cores


@dataclass(frozen=True)
class ImageFailure:
    """An image that could not be scored: where (``FailureStage``) and why (one line)."""

    uri: str
    stage: FailureStage
    reason: str
    sha256: str | None = None


@dataclass(frozen=True)
class SkippedImage:
    """An image deliberately not run through the model, and why."""

    uri: str
    sha256: str | None
    reason: str


@dataclass(frozen=True)
class PreparedImage:
    """A fetched, hashed, decoded and preprocessed image, ready for the model."""

    uri: str
    sha256: str
    size: int
    format: str
    width: int
    height: int
    tensor: np.ndarray
    #: Salted hashes of the DICOM identifiers, by ``images`` column (``DICOM_HASHED_COLUMNS``).
    hashed_ids: dict[str, str] = field(default_factory=dict)

    def skipped(self, reason: str) -> SkippedImage:
        return SkippedImage(self.uri, self.sha256, reason)


@dataclass(frozen=True)
class ScoredImage:
    image: PreparedImage
    probabilities: np.ndarray  # one per class, in manifest order
    label: str  # by the runtime's one rule
    shift_score: float | None = None  # None: the model ships no shift reference
    shift_percentile: float | None = None
    out_of_distribution: bool | None = None


@dataclass
class ChunkOutcome:
    scored: list[ScoredImage] = field(default_factory=list)
    failures: list[ImageFailure] = field(default_factory=list)
    #: Images not run through the model: this version had already scored the same bytes (in an
    #: earlier job, or earlier in this chunk under another name), or a policy keeps them out.
    skipped: list[SkippedImage] = field(default_factory=list)


#: Given sha256s, returns those this model version has already scored.
AlreadyScored = Callable[[Sequence[str]], set[str]]

#: What the decode pool hands back for one URI.
Prepared = PreparedImage | SkippedImage | ImageFailure

log = logging.getLogger(__name__)

#: The first batch of a chunk holds batch_size // FIRST_BATCH_DIVISOR images (see classify_uris).
FIRST_BATCH_DIVISOR = 4


def prepare_image(uri: str, fetcher: ObjectFetcher, runtime: ModelRuntime, settings: Settings) -> Prepared:
    """Fetch → sha256 → decode → preprocess one image. Never raises for a problem of this image:
    it comes back as an ``ImageFailure`` (or a ``SkippedImage``). A ``TransientError`` (storage
    unreachable) is about every image and propagates."""
    started = time.perf_counter()
    try:
        data = fetcher.fetch(uri)
    except TransientError:
        raise
    except Exception as exc:
        return ImageFailure(uri, FailureStage.FETCH, _reason(exc))
    metrics.STAGE_DURATION.labels(stage="fetch").observe(time.perf_counter() - started)

    sha256 = hashlib.sha256(data).hexdigest()
    started = time.perf_counter()
    try:
        decoded = decode_image(
            data,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            hasher=functools.partial(hash_identifier, settings=settings),
            dicom_policy=DicomPolicy.from_settings(settings),
            target_side=runtime.contract.decode_side,
        )
    except ImageSkipped as exc:  # readable, but outside what we score (a lateral view, a CT slice)
        return SkippedImage(uri, sha256, str(exc))
    except Exception as exc:
        return ImageFailure(uri, FailureStage.DECODE, _reason(exc), sha256)
    blank = no_contrast(decoded.pixels)
    if blank is not None:
        return SkippedImage(uri, sha256, blank)
    try:
        tensor = runtime.preprocess(decoded.pixels)
    except Exception as exc:
        return ImageFailure(uri, FailureStage.PREPROCESS, _reason(exc), sha256)
    metrics.STAGE_DURATION.labels(stage="decode").observe(time.perf_counter() - started)
    return PreparedImage(
        uri=uri,
        sha256=sha256,
        size=len(data),
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        tensor=tensor,
        hashed_ids={k: v for k, v in decoded.metadata.items() if k in DICOM_HASHED_COLUMNS.values()},
    )


def _reason(exc: BaseException) -> str:
    """Our own errors carry a reason meant for people; anything else also needs its type."""
    if isinstance(exc, MemoryError):
        return "image too large to decode in memory"
    return " ".join(str(exc).split()) if isinstance(exc, ImageError) else one_line(exc)


def _lower_thread_priority(niceness: int) -> None:
    """Make the calling thread ``niceness`` steps nicer (Linux schedules threads individually).

    On a CPU-only worker the decode threads and the model's own threads share the cores. The
    model is the bottleneck, so it should never wait for a core while an image decodes: the
    decode threads run nicer and take the time the model leaves idle (its sequential layers,
    the gaps between batches). Lowering one's own priority needs no privilege.
    """
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    thread_id = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, os.getpriority(os.PRIO_PROCESS, thread_id) + niceness)
    except OSError as exc:  # a sandbox may forbid it; decoding still works
        log.debug("could not lower the decode thread's priority: %s", exc)


class _DecodePool:
    """The decode threads, replaceable: a decoder stuck on one file keeps its thread (Python
    cannot stop a thread), so the pool is abandoned to it and new images get a fresh one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = self._new()

    def _new(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            self.settings.decode_threads_for(model_on_cpu(), process_cores()),
            thread_name_prefix="cxr-decode",
            initializer=_lower_thread_priority,
            initargs=(self.settings.decode_niceness,),
        )

    def abandon(self) -> None:
        """Leave the current threads to finish on their own; later submissions go elsewhere."""
        self.pool.shutdown(wait=False)
        self.pool = self._new()

    def close(self, pending: Sequence[Future[Prepared]]) -> None:
        for future in pending:
            future.cancel()
        self.pool.shutdown(wait=not any(future.running() for future in pending))


def _prepared_in_order(
    uris: Sequence[str], fetcher: ObjectFetcher, runtime: ModelRuntime, settings: Settings, window: int
) -> Iterator[Prepared]:
    """Prepared images (or skips, or failures) in URI order, with at most ``window`` in flight."""
    pending: collections.deque[tuple[str, Future[Prepared]]] = collections.deque()
    remaining = iter(uris)
    decode = _DecodePool(settings)
    try:
        while True:
            while len(pending) < window and (uri := next(remaining, None)) is not None:
                pending.append((uri, decode.pool.submit(prepare_image, uri, fetcher, runtime, settings)))
            if not pending:
                return
            uri, future = pending.popleft()
            try:
                yield future.result(timeout=settings.decode_timeout_s)
            except FutureTimeout:
                limit = settings.decode_timeout_s
                log.error("%s: still decoding after %g s; failed, and its thread abandoned", uri, limit)
                yield ImageFailure(uri, FailureStage.DECODE, f"fetch and decode took longer than {limit:g} s")
                # Images queued behind the stuck one move to a fresh pool, in the same order;
                # those already running finish on the old one.
                queued = [future.cancel() for _, future in pending]
                decode.abandon()
                pending = collections.deque(
                    (u, decode.pool.submit(prepare_image, u, fetcher, runtime, settings) if moved else f)
                    for (u, f), moved in zip(pending, queued, strict=True)
                )
    finally:
        decode.close([future for _, future in pending])


def classify_uris(
    uris: Sequence[str],
    runtime: ModelRuntime,
    settings: Settings,
    fetcher: ObjectFetcher,
    already_scored: AlreadyScored | None = None,
) -> ChunkOutcome:
    """Score ``uris`` with ``runtime`` in batches of ``inference_batch_size``, decoding ahead.

    Images whose bytes this model version has already scored (``already_scored``, or an
    earlier URI of this chunk with the same sha256) are skipped, not run again: a re-run of an
    archive after a crash costs reading it, not scoring it.
    """
    batch_size = settings.batch_size_for(model_on_cpu())
    # The first batch of a chunk is small: the model starts as soon as a few images are ready
    # instead of idling until a whole batch has been fetched and decoded; later batches fill
    # while it runs.
    target = max(1, batch_size // FIRST_BATCH_DIVISOR)
    outcome = ChunkOutcome()
    batch: list[PreparedImage] = []
    seen: set[str] = set()

    def flush() -> None:
        nonlocal target
        target = batch_size
        known = already_scored([image.sha256 for image in batch]) if already_scored else set()
        fresh = [image for image in batch if image.sha256 not in known]
        outcome.skipped.extend(i.skipped(SkipReason.ALREADY_SCORED) for i in batch if i.sha256 in known)
        if fresh:
            _infer(fresh, runtime, outcome, abstain=settings.shift_policy == "abstain")
        batch.clear()

    for item in _prepared_in_order(uris, fetcher, runtime, settings, window=2 * batch_size):
        if isinstance(item, ImageFailure):
            outcome.failures.append(item)
        elif isinstance(item, SkippedImage):
            outcome.skipped.append(item)
        elif item.sha256 in seen:
            outcome.skipped.append(item.skipped(SkipReason.DUPLICATE_IN_CHUNK))
        else:
            seen.add(item.sha256)
            batch.append(item)
            if len(batch) >= target:
                flush()
    if batch:
        flush()
    return outcome


def _infer(batch: list[PreparedImage], runtime: ModelRuntime, outcome: ChunkOutcome, abstain: bool) -> None:
    """One forward pass; a batch the model refuses becomes infer-stage failures. With
    ``abstain``, an image the shift reference flags gets no label: it is skipped with the reason."""
    started = time.perf_counter()
    try:
        scores = runtime.score(np.stack([image.tensor for image in batch]))
    except Exception as exc:  # any model error is about this batch, not transient
        reason = f"inference failed: {one_line(exc)}"
        log.error("%s on a batch of %d (%s)", reason, len(batch), runtime.ref)
        outcome.failures.extend(ImageFailure(i.uri, FailureStage.INFER, reason, i.sha256) for i in batch)
        return
    metrics.STAGE_DURATION.labels(stage="infer").observe(time.perf_counter() - started)
    metrics.BATCH_SIZE.observe(len(batch))
    labels = runtime.labels(scores.probabilities)
    for i, (image, label) in enumerate(zip(batch, labels, strict=True)):
        if scores.shift_percentiles is None:
            outcome.scored.append(ScoredImage(image, scores.probabilities[i], label))
            continue
        percentile = float(scores.shift_percentiles[i])
        flagged = bool(scores.out_of_distribution[i])
        metrics.SHIFT_PERCENTILE.labels(*metrics.model_labels(runtime)).observe(percentile)
        if flagged and abstain:
            outcome.skipped.append(
                image.skipped(f"unlike the training data (shift percentile {percentile:.1f})")
            )
            continue
        outcome.scored.append(
            ScoredImage(
                image, scores.probabilities[i], label, float(scores.shift_scores[i]), percentile, flagged
            )
        )
