"""Explanation files in object storage, and their rows in the SQL ``artifacts`` table.

Keys identify the image, the exact model version and the method, so re-explaining the same
image with the same model overwrites the same objects, and the unique ``uri`` column makes the
SQL insert idempotent::

    artifacts/<model>/<version>/<method>/<sha256[:2]>/<sha256>/<file>
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cxr.core.storage import ObjectStore

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: file name → (artifact kind in SQL, content type)
FILE_KINDS: dict[str, tuple[str, str]] = {
    "heatmap.npz": ("heatmap", "application/octet-stream"),
    "overlay.png": ("overlay", "image/png"),
    "rois.json": ("rois", "application/json"),
    "feature_maps.png": ("feature_maps", "image/png"),
}


@dataclass(frozen=True)
class ArtifactRecord:
    """One written file, ready to become an ``Artifact`` row."""

    kind: str
    uri: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_row(
        self, *, prediction_id: int | None = None, image_sha256: str | None = None, job_id: str | None = None
    ) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "uri": self.uri,
            "params": self.params,
            "prediction_id": prediction_id,
            "image_sha256": image_sha256,
            "job_id": job_id,
        }


def explanation_params(item: Any) -> dict[str, Any]:
    """The params every explanation's artifact rows carry, from the worker and ``cxr explain
    --store`` alike (``item`` is an ``ImageExplanation``)."""
    return {"layer": item.layer, "label": item.label, "shortcut_score": item.shortcut_score}


def method_slug(method: str) -> str:
    """A method name safe in keys and URLs: 'gradcam++' → 'gradcam-plus-plus'."""
    return method.replace("++", "-plus-plus")


def artifact_prefix(model_name: str, model_version: int, method: str, image_sha256: str) -> str:
    if not _SHA256.match(image_sha256):
        raise ValueError(f"image sha256 must be 64 lowercase hex digits, got {image_sha256!r}")
    return f"artifacts/{model_name}/{model_version}/{method_slug(method)}/{image_sha256[:2]}/{image_sha256}"


def write_artifacts(
    store: ObjectStore,
    files: Mapping[str, bytes],
    *,
    model_name: str,
    model_version: int,
    method: str,
    image_sha256: str,
    params: Mapping[str, Any] | None = None,
) -> list[ArtifactRecord]:
    """Put each file under the image/model/method prefix; one record per file."""
    prefix = artifact_prefix(model_name, model_version, method, image_sha256)
    common = {"model": model_name, "model_version": model_version, "method": method, **(params or {})}
    records = []
    for name, data in files.items():
        kind, content_type = FILE_KINDS.get(name, ("file", "application/octet-stream"))
        uri = store.put(f"{prefix}/{name}", data, content_type=content_type)
        records.append(ArtifactRecord(kind, uri, {**common, "file": name}))
    log.debug("wrote %d artifacts under %s", len(records), prefix)
    return records


def insert_artifacts(
    session: Any,
    records: list[ArtifactRecord],
    *,
    prediction_id: int | None = None,
    image_sha256: str | None = None,
    job_id: str | None = None,
) -> int:
    """Insert the rows, skipping URIs already recorded (a redelivered task); returns rows added.

    ``image_sha256`` and ``job_id`` must name existing ``images`` / ``jobs`` rows when given.
    """
    from cxr.core.db.models import Artifact
    from cxr.core.db.session import insert_ignoring_conflicts

    rows = [r.to_row(prediction_id=prediction_id, image_sha256=image_sha256, job_id=job_id) for r in records]
    return insert_ignoring_conflicts(session, Artifact, rows)
