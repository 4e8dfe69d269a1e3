"""Object storage: one interface (``ObjectStore``), a local-directory and an S3 backend.

``open_store(url)`` builds the store behind a root URI; ``read_uri(uri)`` fetches any single
object named by a full URI (an image in someone's archive bucket, a model file).
"""

from __future__ import annotations

from pathlib import Path

from cxr.core.settings import Settings, get_settings
from cxr.core.storage.base import ObjectInfo, ObjectStore
from cxr.core.storage.keys import StorageURI, join_key, parse_uri, validate_key
from cxr.core.storage.local import LocalStore

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "StorageURI",
    "join_key",
    "open_store",
    "parse_uri",
    "read_uri",
    "split_uri",
    "validate_key",
]


def open_store(url: str | None = None, settings: Settings | None = None) -> ObjectStore:
    """The store rooted at ``url`` (default: ``CXR_STORAGE_URL``)."""
    settings = settings or get_settings()
    parsed = parse_uri(url or settings.storage_url or "")
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    from cxr.core.storage.s3 import S3Store, make_s3_client  # boto3 only when S3 is used

    return S3Store(parsed.bucket, parsed.path, make_s3_client(settings))


def split_uri(uri: str, settings: Settings | None = None) -> tuple[ObjectStore, str]:
    """(store, key) for a full object URI: the store is rooted at the bucket or the file's folder."""
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        return LocalStore(path.parent), path.name
    store = open_store(f"s3://{parsed.bucket}", settings)
    return store, validate_key(parsed.path)


def read_uri(uri: str, settings: Settings | None = None) -> bytes:
    """The bytes of the object named by a full ``s3://`` or ``file://`` URI, or of a DICOMweb
    instance named by the walk of a ``dicomweb://`` source."""
    from cxr.core.dicomweb import fetch_instance, is_dicomweb

    if is_dicomweb(uri):
        return fetch_instance(uri, settings or get_settings())
    store, key = split_uri(uri, settings)
    return store.get(key)
