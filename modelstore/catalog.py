"""Mirror of published model versions into SQL, so predictions and evaluations can be joined
with the model that made them. The object store stays the source of truth for the registry."""

from __future__ import annotations

from cxr.core.db.models import ModelVersion
from cxr.core.db.session import insert_ignoring_conflicts, session_scope
from cxr.core.settings import Settings
from modelstore.manifest import Manifest
from modelstore.store import PublishHook


def catalogue_hook(settings: Settings) -> PublishHook:
    def record(manifest: Manifest, uri: str) -> None:
        with session_scope(settings) as session:
            row = {
                "name": manifest.name,
                "version": manifest.version,
                "sha256": manifest.sha256,
                "uri": uri,
                "architecture": manifest.architecture,
                "classes": manifest.classes,
                "parent_version": manifest.parent_version,
                "manifest": manifest.model_dump(mode="json"),
            }
            if not insert_ignoring_conflicts(session, ModelVersion, [row]):
                existing = (
                    session.query(ModelVersion).filter_by(name=manifest.name, version=manifest.version).one()
                )
                existing.manifest = row["manifest"]  # metrics were added to the manifest

    return record
