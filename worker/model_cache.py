"""Models held in memory by one worker process: pulled once, warmed up, evicted LRU.

A chunk names its model by (name, version, sha256), pinned when the job was submitted. The cache
pulls that exact file through the model store (which verifies the sha256), loads it in Keras safe
mode, compiles a forward function and runs one warm-up pass, so the first real batch does not pay
for graph tracing. Keras and TensorFlow are imported here, lazily, on the first load: never in the
Celery parent process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.core.errors import ManifestError
from cxr.core.settings import Settings
from modelstore import Manifest, ResolvedModel, open_model_store
from worker import metrics

log = logging.getLogger(__name__)

Forward = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ModelSpec:
    """The exact model version a chunk must be scored with."""

    name: str
    version: int
    sha256: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        try:
            return cls(name=str(data["name"]), version=int(data["version"]), sha256=str(data["sha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"a chunk's model must name name, version and sha256, got {data!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass
class LoadedModel:
    """A model ready to score: its manifest, a compiled forward function and how long it took."""

    spec: ModelSpec
    manifest: Manifest
    model: Any
    forward: Forward
    load_seconds: float
    #: Explainers built on this model, by method (worker.explaining builds them on first use).
    explainers: dict[str, Any] = field(default_factory=dict)


def compile_forward(model: Any, input_shape: tuple[int, int, int]) -> Forward:
    """``model(x, training=False)`` as a compiled function with a free batch dimension.

    On the TensorFlow backend that is a ``tf.function`` with an input signature, so batches of
    any size reuse one graph (``model.predict`` per batch rebuilds its data pipeline every call,
    which dominates on CPU). Other backends call the model eagerly.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        signature = [tf.TensorSpec(shape=(None, *input_shape), dtype=tf.float32)]
        graph = tf.function(lambda x: model(x, training=False), input_signature=signature)
        return lambda batch: np.asarray(graph(batch))
    return lambda batch: np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)))


def load_model(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """Pull (sha256-checked), load in safe mode, compile and warm up one model version."""
    from modelstore.loading import load_keras_model

    started = time.perf_counter()
    store = open_model_store(settings, catalogue=False)
    pulled = store.pull(ResolvedModel(name=spec.name, version=spec.version, sha256=spec.sha256, uri=""))
    model = load_keras_model(pulled.path)
    shape = pulled.manifest.input.shape
    forward = compile_forward(model, shape)
    forward(np.zeros((1, *shape), dtype=np.float32))  # trace the graph before the first chunk
    seconds = time.perf_counter() - started
    log.info("loaded %s@%d (sha256 %s…) in %.2f s", spec.name, spec.version, spec.sha256[:12], seconds)
    return LoadedModel(
        spec=spec, manifest=pulled.manifest, model=model, forward=forward, load_seconds=seconds
    )


class ModelCache:
    """Up to ``capacity`` loaded models, least recently used evicted first. Thread-safe."""

    def __init__(self, settings: Settings, capacity: int | None = None) -> None:
        self.settings = settings
        self.capacity = capacity or settings.model_cache_size
        self._models: OrderedDict[ModelSpec, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, spec: object) -> bool:
        return spec in self._models

    def get(self, spec: ModelSpec) -> LoadedModel:
        with self._lock:
            if spec in self._models:
                self._models.move_to_end(spec)
                metrics.MODEL_CACHE_HITS.inc()
                return self._models[spec]
            metrics.MODEL_CACHE_MISSES.inc()
            loaded = load_model(spec, self.settings)
            metrics.model_loaded(
                spec.name, spec.version, spec.sha256, loaded.manifest.classes, loaded.load_seconds
            )
            self._models[spec] = loaded
            while len(self._models) > self.capacity:
                old, _ = self._models.popitem(last=False)
                metrics.model_evicted(old.name, old.version, old.sha256)
                log.info("evicted %s@%d from the model cache", old.name, old.version)
            return loaded


_process_cache: ModelCache | None = None


def process_cache(settings: Settings) -> ModelCache:
    """The cache of this worker process, created on first use (after the fork)."""
    global _process_cache
    if _process_cache is None or _process_cache.settings != settings:
        _process_cache = ModelCache(settings)
    return _process_cache
