"""Mirror of published model versions into SQL, so predictions and evaluations can be joined
with the model that made them. The object store stays the source of truth for the registry."""

from __future__ import annotations

import logging

from sqlalchemy import select

from cxr.core.db.models import ModelVersion
from cxr.core.db.session import insert_ignoring_conflicts, session_scope
from cxr.core.settings import Settings
from modelstore.integrity import manifest_digest
from modelstore.manifest import Manifest
from modelstore.store import DigestLookup, PublishHook

log = logging.getLogger(__name__)


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
                "manifest_sha256": manifest_digest(manifest),
            }
            if not insert_ignoring_conflicts(session, ModelVersion, [row]):
                existing = (
                    session.query(ModelVersion).filter_by(name=manifest.name, version=manifest.version).one()
                )
                existing.manifest = row["manifest"]  # metrics were added to the manifest

    return record


def digest_lookup(settings: Settings) -> DigestLookup:
    """The manifest digest the SQL catalogue recorded at publish, for ``ModelStore``'s checks.

    None where there is no row (a store used without the catalogue) or no database to ask: the
    other records (alias documents, the digest a job pinned) are still checked then.
    """

    def lookup(name: str, version: int) -> str | None:
        try:
            with session_scope(settings) as session:
                return session.scalar(
                    select(ModelVersion.manifest_sha256).where(
                        ModelVersion.name == name, ModelVersion.version == version
                    )
                )
        except Exception as exc:  # no catalogue here (not migrated, no database)
            log.debug("no catalogue digest for %s@%d: %s", name, version, exc)
            return None

    return lookup
