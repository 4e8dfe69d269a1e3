"""Object store on any S3-compatible server (AWS, MinIO, SeaweedFS) through boto3."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, BinaryIO

import boto3
import botocore.config
import botocore.exceptions
import urllib3

from cxr.core.errors import ObjectNotFound, PermanentError, StorageUnavailable
from cxr.core.settings import Settings
from cxr.core.storage.base import ObjectInfo, ObjectStore

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_TRANSIENT_STATUS = {500, 502, 503, 504}

#: A presigned GET is used at once; it only has to outlive one request.
_PRESIGN_SECONDS = 60


def make_s3_client(settings: Settings) -> Any:
    """A boto3 S3 client from settings. Credentials: CXR_S3_* if set, else boto3's own chain.

    'standard' retry mode retries throttling, 5xx and connection errors with exponential
    backoff and jitter, which rides out a storage server restarting for a few seconds.
    """
    config = botocore.config.Config(
        region_name=settings.s3_region,
        retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"},
        signature_version="s3v4",
    )
    kwargs: dict[str, Any] = {"endpoint_url": settings.s3_endpoint_url, "config": config}
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        kwargs["aws_access_key_id"] = settings.s3_access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    return boto3.session.Session().client("s3", **kwargs)


def _translate(exc: Exception, what: str) -> Exception:
    """Map a botocore error onto the project's permanent/transient split, never echoing secrets."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _NOT_FOUND:
            return ObjectNotFound(f"{what}: not found")
        if status in _TRANSIENT_STATUS or code in ("SlowDown", "RequestTimeout"):
            return StorageUnavailable(f"{what}: S3 answered {code or status}")
        return PermanentError(f"{what}: S3 refused the request ({code or status})")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StorageUnavailable(f"{what}: {type(exc).__name__}")
    return exc


class S3Store(ObjectStore):
    """Keys live under ``s3://bucket/prefix/``. PUTs are atomic on S3 by nature."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.root_uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # Whole-object reads (a worker's images) go through presigned URLs on this pool; see _get.
        self._http = urllib3.PoolManager(
            num_pools=4, maxsize=8, retries=False, timeout=urllib3.Timeout(connect=5, read=60)
        )

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (deployments usually create it beforehand)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise _translate(exc, f"create bucket {self.bucket}") from exc

    def _put(self, key: str, data: bytes | BinaryIO, content_type: str | None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=bytes(data), **extra)
            else:
                self.client.upload_fileobj(data, self.bucket, self._full(key), ExtraArgs=extra or None)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _translate(exc, f"put {self.uri(key)}") from exc

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, IfNoneMatch="*")
            return True
        except botocore.exceptions.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _PRECONDITION:
                return False
            raise _translate(exc, f"put-if-absent {self.uri(key)}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _translate(exc, f"put-if-absent {self.uri(key)}") from exc

    def _get(self, key: str) -> bytes:
        """The whole object, by a presigned GET on a plain urllib3 pool when that answers 200.

        A worker reads every image once, and boto3's ``get_object`` spends about 3 ms of client
        CPU per call in its event and parsing machinery, on the same cores as the model. Signing
        a URL (about 0.45 ms, no network) and a plain GET (about 0.7 ms) cost a third of that
        (docs/WORKER.md). Only the happy path is taken this way: a connection error or any
        status but 200 falls back to ``get_object``, which retries transient failures and
        translates errors exactly as before, so the fast path changes no behaviour but speed.
        """
        data = self._presigned_get(key)
        if data is not None:
            return data
        with self._open(key) as stream:
            return stream.read()

    def _presigned_get(self, key: str) -> bytes | None:
        try:
            params = {"Bucket": self.bucket, "Key": self._full(key)}
            url = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=_PRESIGN_SECONDS)
            response = self._http.request("GET", url, preload_content=True)
        except (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError):
            return None
        return response.data if response.status == 200 else None

    def _open(self, key: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _translate(exc, f"get {self.uri(key)}") from exc
        return _BodyStream(body)

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
            return True
        except botocore.exceptions.ClientError as exc:
            translated = _translate(exc, f"head {self.uri(key)}")
            if isinstance(translated, ObjectNotFound):
                return False
            raise translated from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _translate(exc, f"head {self.uri(key)}") from exc

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full(prefix)):
                for item in page.get("Contents", []):
                    yield ObjectInfo(key=item["Key"][strip:], size=int(item["Size"]))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _translate(exc, f"list {self.root_uri}/{prefix}") from exc

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _translate(exc, f"delete {self.uri(key)}") from exc


class _BodyStream(io.RawIOBase):
    """A file-like wrapper over botocore's StreamingBody that reads in the caller's sizes."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._body.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def read(self, size: int = -1) -> bytes:
        return self._body.read() if size is None or size < 0 else self._body.read(size)

    def close(self) -> None:
        self._body.close()
        super().close()
