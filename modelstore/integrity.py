"""What makes the model store tamper-evident: a manifest digest and a schema for alias documents.

A model file is pinned by its sha256, but the file alone does not say how to feed it or what its
outputs mean: the manifest does (classes in output order, input contract, output kind, and the
file's sha256 itself). So each version's manifest is hashed at publish (``manifest_digest``) and
the digest is recorded where the version is registered: the SQL catalogue row and every alias
document pointing at it. Resolve and pull recompute it from the manifest they read and refuse a
mismatch (``ModelIntegrityError`` naming the version): reordered classes, a changed input size or
a ``sha256`` copied from another version are all refused instead of silently scoring wrong.

The digest covers everything but ``metrics``: evaluations append figures to a published manifest
(``ModelStore.add_metrics``), which changes nothing about how the model is run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from cxr.core.errors import ManifestError
from modelstore.manifest import Manifest

#: Manifest fields left out of the digest: they may change after publish by design.
MUTABLE_FIELDS = frozenset({"metrics"})
_SHA256 = r"^[0-9a-f]{64}$"


def manifest_digest(manifest: Manifest | dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), mutable fields left out.

    Takes the JSON form too (``model_dump(mode="json")``, as the SQL catalogue stores it), so the
    0006 migration can back-fill digests of versions published before they existed.
    """
    data = manifest.model_dump(mode="json") if isinstance(manifest, Manifest) else dict(manifest)
    frozen = {key: value for key, value in data.items() if key not in MUTABLE_FIELDS}
    canonical = json.dumps(frozen, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class AliasDocument(BaseModel):
    """``models/<name>/aliases/<alias>.json``: a pointer, validated before it is followed.

    ``version`` is a strict integer >= 1 (``2.9`` or ``true`` are refused, not rounded), and the
    document names the file and manifest digests of the version it points at.
    """

    model_config = ConfigDict(extra="ignore")

    version: StrictInt = Field(ge=1)
    sha256: str = Field(pattern=_SHA256)
    manifest_sha256: str = Field(pattern=_SHA256)
    previous: StrictInt | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def parse(cls, raw: bytes, where: str) -> AliasDocument:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'document'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ManifestError(
                f"alias document {where} is invalid ({problems}); re-point it with "
                "`cxr models promote NAME VERSION --alias ALIAS`"
            ) from exc
