"""The batched inference engine: URIs in, per-image probabilities or per-image failures out.

Fetch, hash, decode and preprocess run in a small thread pool (``decode_threads``) while the
model runs: the engine keeps at most two batches of images in flight ahead of the model, so
batch k+1 decodes while batch k is in the forward pass, and memory stays bounded whatever the
chunk size. Pillow, boto3 and TensorFlow all release the GIL in their heavy parts.

A bad image (unreadable, missing, too large) becomes an ``ImageFailure`` with its stage and
reason and the rest of the chunk is scored. A transient error (storage unreachable) propagates,
so the task retries the whole chunk; results are idempotent, so that costs only time.
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
from dataclasses import dataclass, field

import numpy as np

from cxr.core.errors import PermanentError
from cxr.core.imaging import decode_image, preprocess
from cxr.core.imaging.dicom import ImageSkipped
from cxr.core.privacy import hash_identifier
from cxr.core.settings import Settings
from modelstore import Manifest
from worker import metrics
from worker.fetch import ObjectFetcher
from worker.model_cache import LoadedModel


@dataclass(frozen=True)
class ImageFailure:
    """An image that could not be scored: the stage (fetch/decode/preprocess/infer) and why."""

    uri: str
    stage: str
    reason: str
    sha256: str | None = None


@dataclass(frozen=True)
class PreparedImage:
    """A fetched, hashed, decoded and preprocessed image, ready for the model."""

    uri: str
    sha256: str
    size: int
    format: str
    width: int
    height: int
    patient_id_hash: str | None
    tensor: np.ndarray


@dataclass(frozen=True)
class ScoredImage:
    image: PreparedImage
    probabilities: np.ndarray  # one per manifest class, in manifest order


@dataclass
class ChunkOutcome:
    scored: list[ScoredImage] = field(default_factory=list)
    failures: list[ImageFailure] = field(default_factory=list)
    #: Images this model version had already scored (in an earlier job, or earlier in this
    #: chunk under another name): not run through the model again.
    skipped: list[PreparedImage] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return len(self.scored) + len(self.failures) + len(self.skipped)


#: Given sha256s, returns those this model version has already scored.
AlreadyScored = Callable[[Sequence[str]], set[str]]


log = logging.getLogger(__name__)

#: The first batch of a chunk holds batch_size // FIRST_BATCH_DIVISOR images (see classify_uris).
FIRST_BATCH_DIVISOR = 4


def to_probabilities(raw: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The model's raw output → (N, len(classes)) probabilities in manifest class order.

    softmax: one column per class, as is. sigmoid: a single unit giving P(classes[1]), so
    P(classes[0]) = 1 - p.
    """
    raw = np.asarray(raw, dtype=np.float64)
    n_classes = len(manifest.classes)
    if manifest.output == "sigmoid":
        if raw.ndim != 2 or raw.shape[1] != 1:
            raise PermanentError(f"a sigmoid model must output (N, 1), {manifest.ref} gave {raw.shape}")
        positive = raw[:, 0]
        return np.stack([1.0 - positive, positive], axis=1)
    if raw.ndim != 2 or raw.shape[1] != n_classes:
        raise PermanentError(
            f"a softmax model with {n_classes} classes must output (N, {n_classes}), "
            f"{manifest.ref} gave {raw.shape}"
        )
    return raw


def prepare_image(uri: str, fetcher: ObjectFetcher, manifest: Manifest, settings: Settings) -> PreparedImage:
    """Fetch → sha256 → decode → preprocess one image. Permanent problems become ``_StageError``."""
    started = time.perf_counter()
    try:
        data = fetcher.fetch(uri)
    except PermanentError as exc:
        raise _StageError(ImageFailure(uri, "fetch", str(exc))) from exc
    metrics.STAGE_DURATION.labels(stage="fetch").observe(time.perf_counter() - started)

    sha256 = hashlib.sha256(data).hexdigest()
    started = time.perf_counter()
    try:
        decoded = decode_image(
            data,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            hasher=functools.partial(hash_identifier, settings=settings),
        )
    except ImageSkipped as exc:  # readable, but outside what we score (e.g. a lateral view)
        raise _StageError(ImageFailure(uri, "policy", str(exc), sha256)) from exc
    except PermanentError as exc:
        raise _StageError(ImageFailure(uri, "decode", str(exc), sha256)) from exc
    try:
        tensor = preprocess(decoded.pixels, manifest.input)
    except PermanentError as exc:
        raise _StageError(ImageFailure(uri, "preprocess", str(exc), sha256)) from exc
    metrics.STAGE_DURATION.labels(stage="decode").observe(time.perf_counter() - started)
    return PreparedImage(
        uri=uri,
        sha256=sha256,
        size=len(data),
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        patient_id_hash=decoded.metadata.get("patient_id_hash"),
        tensor=tensor,
    )


class _StageError(Exception):
    """Carries a per-image failure out of a worker thread."""

    def __init__(self, failure: ImageFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


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


def _prepared_in_order(
    uris: Sequence[str], fetcher: ObjectFetcher, manifest: Manifest, settings: Settings, window: int
) -> Iterator[PreparedImage | ImageFailure]:
    """Prepared images (or failures) in URI order, with at most ``window`` in flight."""
    pending: collections.deque[Future[PreparedImage]] = collections.deque()
    remaining = iter(uris)
    with ThreadPoolExecutor(
        settings.decode_threads,
        thread_name_prefix="cxr-decode",
        initializer=_lower_thread_priority,
        initargs=(settings.decode_niceness,),
    ) as pool:
        try:
            while True:
                while len(pending) < window and (uri := next(remaining, None)) is not None:
                    pending.append(pool.submit(prepare_image, uri, fetcher, manifest, settings))
                if not pending:
                    return
                try:
                    yield pending.popleft().result()
                except _StageError as exc:
                    yield exc.failure
        finally:
            for future in pending:
                future.cancel()


def classify_uris(
    uris: Sequence[str],
    loaded: LoadedModel,
    settings: Settings,
    fetcher: ObjectFetcher,
    already_scored: AlreadyScored | None = None,
) -> ChunkOutcome:
    """Score ``uris`` with ``loaded`` in batches of ``inference_batch_size``, decoding ahead.

    Images whose bytes this model version has already scored (``already_scored``, or an
    earlier URI of this chunk with the same sha256) are skipped, not run again: a re-run of an
    archive after a crash costs reading it, not scoring it.
    """
    batch_size = settings.inference_batch_size
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
        outcome.skipped.extend(image for image in batch if image.sha256 in known)
        if fresh:
            _infer(fresh, loaded, outcome)
        batch.clear()

    for item in _prepared_in_order(uris, fetcher, loaded.manifest, settings, window=2 * batch_size):
        if isinstance(item, ImageFailure):
            outcome.failures.append(item)
        elif item.sha256 in seen:
            outcome.skipped.append(item)
        else:
            seen.add(item.sha256)
            batch.append(item)
            if len(batch) >= target:
                flush()
    if batch:
        flush()
    return outcome


def _infer(batch: list[PreparedImage], loaded: LoadedModel, outcome: ChunkOutcome) -> None:
    """One forward pass; a batch the model refuses becomes infer-stage failures."""
    started = time.perf_counter()
    try:
        raw = loaded.forward(np.stack([image.tensor for image in batch]))
        probabilities = to_probabilities(raw, loaded.manifest)
    except Exception as exc:  # any model error is about this batch, not transient
        reason = f"inference failed: {type(exc).__name__}: {str(exc)[:300]}"
        log.error("%s on a batch of %d (%s)", reason, len(batch), loaded.manifest.ref)
        outcome.failures.extend(ImageFailure(i.uri, "infer", reason, i.sha256) for i in batch)
        return
    metrics.STAGE_DURATION.labels(stage="infer").observe(time.perf_counter() - started)
    metrics.BATCH_SIZE.observe(len(batch))
    outcome.scored.extend(
        ScoredImage(image, probs) for image, probs in zip(batch, probabilities, strict=True)
    )
