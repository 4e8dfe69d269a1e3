"""One small exception hierarchy for the whole system.

The split that matters is *permanent* versus *transient*: a task retries a transient error with
backoff (a storage server restarting, a dropped database connection) and records a permanent one
as a failure row without retrying (a corrupt image, a tampered model file). Causes are always
chained with ``raise ... from exc`` so the original reason survives.
"""

from __future__ import annotations


class CxrError(Exception):
    """Base of every error this project raises on purpose."""


class PermanentError(CxrError):
    """Retrying cannot help: the input or the configuration is wrong."""


class TransientError(CxrError):
    """Retrying later may help: a service was unreachable or overloaded."""


class ConfigurationError(PermanentError):
    """A setting is missing or inconsistent."""


class InvalidObjectKey(PermanentError, ValueError):
    """An object key or URI that could escape its root or is otherwise malformed."""


class ObjectNotFound(PermanentError, KeyError):
    """The object does not exist in the store."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else "object not found"


class StorageUnavailable(TransientError):
    """The object store could not be reached or answered with a server error."""


class ImageError(PermanentError):
    """An image could not be read, decoded or preprocessed; the message says why."""


class ModelStoreError(PermanentError):
    """Base of model-store errors."""


class ModelNotFound(ModelStoreError, LookupError):
    """No such model name, version or alias."""


class ModelIntegrityError(ModelStoreError):
    """A model file's sha256 does not match its manifest: the file is refused."""


class ManifestError(ModelStoreError):
    """A manifest is missing, malformed or inconsistent with its model."""


class UnsafeModelError(ModelStoreError):
    """A model could not be loaded in Keras safe mode (e.g. it contains a Lambda layer)."""
