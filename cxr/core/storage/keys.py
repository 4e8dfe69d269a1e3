"""Object keys and storage URIs, validated at the boundary.

A key is a relative, ``/``-separated path inside a store's root. Anything that could escape that
root or be read differently by two backends is refused with an error that names the key and the
rule it breaks, before any backend sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from cxr.core.errors import InvalidObjectKey

MAX_KEY_BYTES = 1024  # the S3 limit; the local backend keeps the same rule so both agree


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative object key, else raise InvalidObjectKey."""
    if not isinstance(key, str):
        raise InvalidObjectKey(f"object key must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidObjectKey("object key is empty")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise InvalidObjectKey(f"object key {key!r} contains a control character")
    if "\\" in key:
        raise InvalidObjectKey(f"object key {key!r} contains a backslash; use '/' between parts")
    if key.startswith("/"):
        raise InvalidObjectKey(f"object key {key!r} is absolute; keys are relative to the store")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidObjectKey(f"object key is longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidObjectKey(f"object key {key!r} has an empty path segment")
        if segment in (".", ".."):
            raise InvalidObjectKey(f"object key {key!r} contains a {segment!r} segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a valid key optionally ending in '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def join_key(*parts: str) -> str:
    """Join key parts with '/', validating the result."""
    return validate_key("/".join(p.strip("/") for p in parts if p))


@dataclass(frozen=True)
class StorageURI:
    """A parsed ``s3://bucket/key`` or ``file:///abs/path``."""

    scheme: str
    bucket: str  # S3 bucket; empty for file://
    path: str  # S3 key (no leading '/') or absolute local path

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"
        return f"file://{self.path}"


def parse_uri(uri: str) -> StorageURI:
    """Parse a storage URI; unknown schemes and malformed keys are refused."""
    if not isinstance(uri, str) or not uri:
        raise InvalidObjectKey("storage URI is empty")
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise InvalidObjectKey(f"S3 URI {uri!r} has no bucket")
        key = parts.path.lstrip("/")
        if key:
            validate_prefix(key)
        return StorageURI("s3", parts.netloc, key)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidObjectKey(f"file URI {uri!r} names a host; use file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidObjectKey(f"file URI {uri!r} is not absolute")
        if any(seg == ".." for seg in path.split("/")):
            raise InvalidObjectKey(f"file URI {uri!r} contains a '..' segment")
        return StorageURI("file", "", path)
    scheme = parts.scheme or "(none)"
    raise InvalidObjectKey(f"unsupported URI scheme {scheme!r} in {uri!r}; expected s3:// or file://")
