"""The one small interface every object store backend implements.

Two backends exist (local directory, S3 through boto3); both validate keys with the same rules
and both write atomically, so a reader never sees half an object.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cxr.core.storage.keys import validate_key, validate_prefix


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int


class ObjectStore(abc.ABC):
    """A flat key → bytes store rooted at one URI (a directory or an S3 bucket/prefix).

    Public methods validate keys, then call the backend's ``_``-prefixed hook.
    """

    #: The URI of this store's root, e.g. ``s3://bucket/prefix`` or ``file:///var/cxr/objects``.
    root_uri: str

    def uri(self, key: str) -> str:
        """The full URI of ``key``, suitable for storing in SQL and fetching later."""
        return f"{self.root_uri.rstrip('/')}/{validate_key(key)}"

    def put(self, key: str, data: bytes | BinaryIO, content_type: str | None = None) -> str:
        """Write (or overwrite) an object atomically; returns its URI."""
        self._put(validate_key(key), data, content_type)
        return self.uri(key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create an object only if none exists under ``key``; True when this call created it.

        This is the one atomic primitive the model store needs to hand out version numbers
        to concurrent publishers.
        """
        return self._put_if_absent(validate_key(key), data)

    def get(self, key: str) -> bytes:
        """The whole object; raises ObjectNotFound."""
        return self._get(validate_key(key))

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream over the object, for large files; close it when done."""
        return self._open(validate_key(key))

    def exists(self, key: str) -> bool:
        return self._exists(validate_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order, fetched lazily page by page."""
        return self._list(validate_prefix(prefix))

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing object is not an error."""
        self._delete(validate_key(key))

    @abc.abstractmethod
    def _put(self, key: str, data: bytes | BinaryIO, content_type: str | None) -> None: ...

    @abc.abstractmethod
    def _put_if_absent(self, key: str, data: bytes) -> bool: ...

    @abc.abstractmethod
    def _get(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def _open(self, key: str) -> BinaryIO: ...

    @abc.abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...
