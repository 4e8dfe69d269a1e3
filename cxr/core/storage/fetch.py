"""Fetching image bytes by URI, with one storage client per bucket for the whole process: the
one fetcher of scoring (the worker) and training (``training_jobs.datasets``) alike.

``cxr.core.storage.read_uri`` builds a fresh boto3 client per call, which costs tens of
milliseconds and would dominate small images; a worker or a training job reads thousands of
objects from a handful of buckets, so it keeps the stores. boto3 clients are thread-safe once
built; building them is not, hence the lock.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cxr.core.dicomweb import fetch_instance, is_dicomweb
from cxr.core.settings import Settings
from cxr.core.storage import LocalStore, ObjectStore, open_store, parse_uri, validate_key


class ObjectFetcher:
    """``fetch(uri) -> bytes`` for ``s3://bucket/key``, ``file:///path`` and DICOMweb instance URIs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._buckets: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def _bucket(self, bucket: str) -> ObjectStore:
        with self._lock:
            if bucket not in self._buckets:
                self._buckets[bucket] = open_store(f"s3://{bucket}", self.settings)
            return self._buckets[bucket]

    def fetch(self, uri: str) -> bytes:
        if is_dicomweb(uri):  # an instance in a PACS: WADO-RS (cxr.core.dicomweb)
            return fetch_instance(uri, self.settings)
        parsed = parse_uri(uri)
        if parsed.scheme == "file":
            path = Path(parsed.path)
            return LocalStore(path.parent).get(path.name)
        return self._bucket(parsed.bucket).get(validate_key(parsed.path))


_process_fetcher: ObjectFetcher | None = None


def process_fetcher(settings: Settings) -> ObjectFetcher:
    """The fetcher of this process (created after the fork, on first use)."""
    global _process_fetcher
    if _process_fetcher is None or _process_fetcher.settings != settings:
        _process_fetcher = ObjectFetcher(settings)
    return _process_fetcher
