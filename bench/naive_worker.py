"""The seeds' serving pattern, as the baseline (c) of ``bench/throughput.py``.

    celery -A bench.naive_worker worker -Q naive -P solo

One task per image; each task fetches the image, decodes and preprocesses it with the project's
own functions, calls ``model.predict`` on a batch of one and commits one prediction row. This is
what a straightforward "Flask/Celery around model.predict" service does. It is given the benefit
of the doubt where the seeds did worse: the model loads once per process, not once per task, and
the same Redis, S3 server and PostgreSQL serve it as the real worker.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from cxr.core.db.models import CLASSIFICATION, Image, Prediction
from cxr.core.db.session import insert_ignoring_conflicts, session_scope
from cxr.core.imaging import decode_image, preprocess
from cxr.core.settings import get_settings
from cxr.core.storage.fetch import process_fetcher
from worker.app import make_app

NAIVE_TASK = "bench.naive_classify"
NAIVE_QUEUE = "naive"

settings = get_settings()
app = make_app(settings)
app.conf.update(include=[], task_routes={NAIVE_TASK: {"queue": NAIVE_QUEUE}})

_model: dict[str, Any] = {}


def _load(name: str, version: int, sha256: str) -> tuple[Any, Any]:
    """The pinned model and its manifest, pulled and loaded once per process."""
    if "model" not in _model:
        from modelstore import ResolvedModel, open_model_store
        from modelstore.runtime import ModelRuntime

        store = open_model_store(settings, catalogue=False)
        runtime = ModelRuntime.load(store, ResolvedModel(name, version, sha256), warm_up=False)
        _model["model"], _model["manifest"] = runtime.model, runtime.manifest
    return _model["model"], _model["manifest"]


@app.task(name=NAIVE_TASK)
def naive_classify(job_id: str, model: dict[str, Any], uri: str) -> None:
    keras_model, manifest = _load(model["name"], model["version"], model["sha256"])
    data = process_fetcher(settings).fetch(uri)
    decoded = decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    tensor = preprocess(decoded.pixels, manifest.input)
    probabilities = keras_model.predict(tensor[np.newaxis], verbose=0)[0]
    best = int(np.argmax(probabilities))
    sha256 = hashlib.sha256(data).hexdigest()
    with session_scope(settings) as session:
        image = {"sha256": sha256, "source_uri": uri, "bytes": len(data), "format": decoded.format,
                 "width": decoded.width, "height": decoded.height}  # fmt: skip
        insert_ignoring_conflicts(session, Image, [image])
        prediction = {
            "image_sha256": sha256, "model_name": model["name"], "model_version": model["version"],
            "kind": CLASSIFICATION, "label": manifest.classes[best], "job_id": job_id,
            "confidence": float(probabilities[best]),
            "probabilities": dict(zip(manifest.classes, map(float, probabilities), strict=True)),
        }  # fmt: skip
        insert_ignoring_conflicts(session, Prediction, [prediction])
