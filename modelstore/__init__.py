"""The model store: publish / list / resolve / promote / pull Keras models with manifests.

``open_model_store()`` builds the store from settings, mirroring publishes into SQL.
"""

from __future__ import annotations

from cxr.core.settings import Settings, get_settings
from cxr.core.storage import open_store
from modelstore.manifest import Manifest, MetricRecord
from modelstore.store import ModelStore, PulledModel, ResolvedModel, parse_ref

__all__ = [
    "Manifest",
    "MetricRecord",
    "ModelStore",
    "PulledModel",
    "ResolvedModel",
    "open_model_store",
    "parse_ref",
]


def open_model_store(settings: Settings | None = None, *, catalogue: bool = True) -> ModelStore:
    """The configured model store; with ``catalogue`` each publish is also recorded in SQL."""
    settings = settings or get_settings()
    from modelstore.catalog import catalogue_hook, digest_lookup

    hook = catalogue_hook(settings) if catalogue else None
    assert settings.model_cache_dir is not None
    return ModelStore(
        open_store(settings=settings),
        settings.model_cache_dir,
        on_publish=hook,
        registered_digest=digest_lookup(settings),
    )
