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
from collections import OrderedDict

from cxr.core.settings import Settings
from modelstore import ResolvedModel, open_model_store
from modelstore.runtime import ModelRuntime
from worker import metrics

log = logging.getLogger(__name__)


def load_runtime(spec: ResolvedModel, settings: Settings) -> ModelRuntime:
    """Pull (sha256-checked), load in safe mode, compile and warm up one pinned model version."""
    return ModelRuntime.load(open_model_store(settings, catalogue=False), spec)


class ModelCache:
    """Up to ``capacity`` loaded models, least recently used evicted first. Thread-safe."""

    def __init__(self, settings: Settings, capacity: int | None = None) -> None:
        self.settings = settings
        self.capacity = capacity or settings.model_cache_size
        self._models: OrderedDict[ResolvedModel, ModelRuntime] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, spec: object) -> bool:
        return spec in self._models

    def get(self, spec: ResolvedModel) -> ModelRuntime:
        with self._lock:
            if spec in self._models:
                self._models.move_to_end(spec)
                metrics.MODEL_CACHE_HITS.inc()
                return self._models[spec]
            metrics.MODEL_CACHE_MISSES.inc()
            loaded = load_runtime(spec, self.settings)
            metrics.model_loaded(spec.name, spec.version, spec.sha256, loaded.classes, loaded.load_seconds)
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
