"""The model registry on top of object storage (MLflow's registry semantics, S3's primitives).

Layout under the store root::

    models/<name>/<version>/.claim          written first, atomically: reserves the number
    models/<name>/<version>/model.keras
    models/<name>/<version>/manifest.json   written last: its presence means "published"
    models/<name>/aliases/<alias>.json      a mutable pointer {"version": N, "sha256": ...,
                                            "manifest_sha256": ...} (``integrity.AliasDocument``)

Version numbers go up by one per publish and are never reused: a publisher reserves a number
with a create-if-absent write (S3 ``If-None-Match: *``, a hard link locally), so two concurrent
publishers cannot get the same one, and a publish that dies half-way leaves a gap, not a reuse.

Tamper evidence (``modelstore.integrity``): every resolve and pull recomputes the manifest's
digest and compares it with each record of it it can find (the alias document followed, the SQL
catalogue row through ``registered_digest``, the digest a job pinned), refusing any mismatch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.core.errors import ManifestError, ModelIntegrityError, ModelNotFound, ObjectNotFound
from cxr.core.imaging.contract import InputContract
from cxr.core.storage import ObjectStore
from modelstore.integrity import AliasDocument, manifest_digest
from modelstore.manifest import (
    Adaptation,
    Manifest,
    MetricRecord,
    OperatingPoint,
    SegmentationSpec,
    ShiftSpec,
    validate_alias,
    validate_name,
)

log = logging.getLogger(__name__)

_BLOCK = 1024 * 1024
#: Called after publish / promote with the manifest, e.g. to mirror it into the SQL catalogue.
PublishHook = Callable[[Manifest, str], None]
#: (name, version) → the manifest digest recorded when the version was published, if known.
DigestLookup = Callable[[str, int], str | None]


@dataclass(frozen=True)
class ResolvedModel:
    """An exact model version: what a job pins at submit time, every chunk carries (as JSON) and
    a worker's model cache is keyed by. The sha256 is the model file's; ``manifest_sha256`` the
    digest of its manifest when it was resolved, so a worker refuses a manifest rewritten since
    (it is not part of equality: the file identifies the model in a cache)."""

    name: str
    version: int
    sha256: str
    manifest_sha256: str = field(default="", compare=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "version": self.version, "sha256": self.sha256}
        if self.manifest_sha256:
            data["manifest_sha256"] = self.manifest_sha256
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedModel:
        """The pinned model a chunk names; anything else is a ``ManifestError``."""
        try:
            name, version, sha256 = data["name"], data["version"], data["sha256"]
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"a pinned model must name name, version and sha256, got {data!r}") from exc
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ManifestError(f"a pinned model's version must be an integer >= 1, got {version!r}")
        manifest_sha256 = str(data.get("manifest_sha256") or "")
        return cls(
            name=validate_name(str(name)),
            version=version,
            sha256=str(sha256),
            manifest_sha256=manifest_sha256,
        )


@dataclass(frozen=True)
class PulledModel:
    """A verified local copy of a model file and its manifest (and of its shift reference,
    when the version ships one)."""

    path: Path
    manifest: Manifest
    shift_path: Path | None = None


def parse_ref(ref: str) -> tuple[str, str]:
    """'name@ref' → (name, ref); a bare name means 'latest'."""
    name, _, selector = ref.partition("@")
    return validate_name(name), selector or "latest"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class ModelStore:
    """Publish, list, resolve, promote and pull model versions."""

    def __init__(
        self,
        storage: ObjectStore,
        cache_dir: Path,
        on_publish: PublishHook | None = None,
        registered_digest: DigestLookup | None = None,
    ) -> None:
        self.storage = storage
        self.cache_dir = Path(cache_dir)
        self.on_publish = on_publish
        self.registered_digest = registered_digest

    # ---- keys -------------------------------------------------------------------------------
    @staticmethod
    def _version_key(name: str, version: int, file: str) -> str:
        return f"models/{name}/{version}/{file}"

    @staticmethod
    def _alias_key(name: str, alias: str) -> str:
        return f"models/{name}/aliases/{alias}.json"

    # ---- listing ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        found: set[str] = set()
        for info in self.storage.list("models/"):
            parts = info.key.split("/")
            if len(parts) == 4 and parts[3] == "manifest.json":
                found.add(parts[1])
        return sorted(found)

    def _numbers(self, name: str, marker: str) -> list[int]:
        numbers = []
        for info in self.storage.list(f"models/{name}/"):
            parts = info.key.split("/")
            if len(parts) == 4 and parts[3] == marker and parts[2].isdigit():
                numbers.append(int(parts[2]))
        return sorted(numbers)

    def versions(self, name: str) -> list[int]:
        """Published versions of a model, oldest first."""
        return self._numbers(validate_name(name), "manifest.json")

    def manifest(self, name: str, version: int) -> Manifest:
        key = self._version_key(validate_name(name), version, "manifest.json")
        try:
            raw = self.storage.get(key)
        except ObjectNotFound as exc:
            raise ModelNotFound(f"no model {name}@{version}") from exc
        manifest = Manifest.from_json(raw, where=self.storage.uri(key))
        if (manifest.name, manifest.version) != (name, version):
            raise ManifestError(f"{self.storage.uri(key)} describes {manifest.ref}, not {name}@{version}")
        return manifest

    def aliases(self, name: str) -> dict[str, int]:
        """Valid aliases of ``name`` → version (broken ones are in ``alias_problems``)."""
        return {alias: doc.version for alias, doc in self._alias_documents(name)[0].items()}

    def alias_problems(self, name: str) -> dict[str, str]:
        """Aliases of ``name`` whose document is unreadable or invalid → why."""
        return self._alias_documents(name)[1]

    def _alias_documents(self, name: str) -> tuple[dict[str, AliasDocument], dict[str, str]]:
        good: dict[str, AliasDocument] = {}
        bad: dict[str, str] = {}
        for info in self.storage.list(f"models/{validate_name(name)}/aliases/"):
            alias = info.key.rsplit("/", 1)[1].removesuffix(".json")
            try:
                good[alias] = AliasDocument.parse(self.storage.get(info.key), self.storage.uri(info.key))
            except ManifestError as exc:
                bad[alias] = str(exc)
        return good, bad

    def verified_manifest(self, name: str, version: int, expected: Mapping[str, str | None]) -> Manifest:
        """The manifest of ``name@version`` if its digest equals every known record of it
        (``expected``: where the record is → digest, None or '' when there is none), plus the SQL
        catalogue's when the store has one; else ``ModelIntegrityError`` naming the version."""
        manifest = self.manifest(name, version)
        actual = manifest_digest(manifest)
        records = dict(expected)
        if self.registered_digest is not None:
            records["the SQL catalogue"] = self.registered_digest(name, version)
        for where, digest in records.items():
            if digest and digest != actual:
                raise ModelIntegrityError(
                    f"{name}@{version}: manifest.json does not match the digest recorded in {where} "
                    f"({actual[:12]}… against {digest[:12]}…): refused, the version was altered after "
                    "it was published"
                )
        return manifest

    # ---- resolving --------------------------------------------------------------------------
    def _unknown_model(self, name: str) -> ModelNotFound:
        """The error for a name nothing is published under, naming what is."""
        known = ", ".join(self.names()) or "none yet"
        return ModelNotFound(f"no model {name!r} in the model store (known: {known})")

    def resolve(self, ref: str) -> ResolvedModel:
        """'name@production' | 'name@3' | 'name@latest' | 'name' → the exact version."""
        name, selector = parse_ref(ref)
        if selector == "latest":
            versions = self.versions(name)
            if not versions:
                raise self._unknown_model(name)
            version = versions[-1]
        elif selector.isdigit():
            version = int(selector)
        else:
            key = self._alias_key(name, validate_alias(selector))
            try:
                raw = self.storage.get(key)
            except ObjectNotFound as exc:
                if not self.versions(name):
                    raise self._unknown_model(name) from exc
                known = ", ".join(sorted(self.aliases(name))) or "none"
                message = f"model {name!r} has no alias {selector!r} (its aliases: {known})"
                raise ModelNotFound(message) from exc
            doc = AliasDocument.parse(raw, self.storage.uri(key))
            manifest = self.verified_manifest(
                name, doc.version, {f"alias {name}@{selector}": doc.manifest_sha256}
            )
            if doc.sha256 != manifest.sha256:
                raise ModelIntegrityError(
                    f"{name}@{doc.version}: alias {name}@{selector} names model file {doc.sha256[:12]}…, the "
                    f"manifest {manifest.sha256[:12]}…: refused"
                )
            return ResolvedModel(name, doc.version, manifest.sha256, manifest_digest(manifest))
        manifest = self.verified_manifest(name, version, {})
        return ResolvedModel(
            name=name, version=version, sha256=manifest.sha256, manifest_sha256=manifest_digest(manifest)
        )

    def file_uri(self, resolved: ResolvedModel) -> str:
        """Where the version's model file lives in object storage."""
        manifest = self.manifest(resolved.name, resolved.version)
        return self.storage.uri(self._version_key(resolved.name, resolved.version, manifest.file))

    # ---- publishing -------------------------------------------------------------------------
    def _reserve_version(self, name: str) -> int:
        claimed = self._numbers(name, ".claim")
        version = (claimed[-1] if claimed else 0) + 1
        stamp = json.dumps({"claimed_at": dt.datetime.now(dt.UTC).isoformat(), "pid": os.getpid()})
        while not self.storage.put_if_absent(self._version_key(name, version, ".claim"), stamp.encode()):
            version += 1  # someone else took it between our listing and our claim
        return version

    def publish(
        self,
        name: str,
        model_file: Path,
        *,
        architecture: str,
        classes: list[str],
        input_contract: InputContract,
        output: str,
        gradcam_layer: str | None = None,
        metrics: Iterable[MetricRecord] = (),
        training_data_fingerprint: str | None = None,
        parent_version: int | None = None,
        library_versions: dict[str, str] | None = None,
        description: str = "",
        aliases: Iterable[str] = (),
        shift: tuple[ShiftSpec, bytes] | None = None,
        operating_points: Mapping[str, OperatingPoint] | None = None,
        segmentation: SegmentationSpec | None = None,
        adaptation: Adaptation | None = None,
    ) -> Manifest:
        """Upload a model file and its manifest as the next version of ``name``; ``shift`` is the
        reference's spec and its ``.npz`` bytes (``modelstore.shift``), stored beside the model."""
        validate_name(name)
        for alias in aliases:
            validate_alias(alias)
        model_file = Path(model_file)
        if model_file.suffix != ".keras":
            raise ManifestError(f"publish expects a .keras file, got {model_file.name}")
        sha256, size = sha256_file(model_file), model_file.stat().st_size
        version = self._reserve_version(name)
        manifest = Manifest(
            name=name,
            version=version,
            architecture=architecture,
            classes=list(classes),
            input=input_contract,
            output=output,  # type: ignore[arg-type]  # validated by pydantic
            gradcam_layer=gradcam_layer,
            metrics=list(metrics),
            training_data_fingerprint=training_data_fingerprint,
            parent_version=parent_version,
            library_versions=library_versions or {},
            sha256=sha256,
            size_bytes=size,
            description=description,
            shift=_checked_shift(shift),
            operating_points=dict(operating_points or {}),
            segmentation=segmentation,
            adaptation=adaptation,
        )
        with model_file.open("rb") as stream:
            self.storage.put(self._version_key(name, version, manifest.file), stream)
        if shift is not None:
            self.storage.put(self._version_key(name, version, shift[0].file), shift[1])
        self._write_manifest(manifest)
        log.info("published %s (sha256 %s, %d bytes)", manifest.ref, sha256[:12], size)
        for alias in aliases:
            self.set_alias(name, alias, version)
        return manifest

    def _write_manifest(self, manifest: Manifest) -> None:
        key = self._version_key(manifest.name, manifest.version, "manifest.json")
        self.storage.put(key, manifest.to_json().encode(), content_type="application/json")
        if self.on_publish is not None:
            self.on_publish(
                manifest, self.storage.uri(self._version_key(manifest.name, manifest.version, manifest.file))
            )

    def add_metrics(self, name: str, version: int, record: MetricRecord) -> Manifest:
        """Append evaluation figures to a published manifest (the model file is untouched)."""
        manifest = self.manifest(name, version)
        updated = manifest.model_copy(update={"metrics": [*manifest.metrics, record]})
        self._write_manifest(updated)
        return updated

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` (which must be published)."""
        manifest = self.verified_manifest(validate_name(name), version, {})
        key = self._alias_key(name, validate_alias(alias))
        previous = None
        with contextlib.suppress(ObjectNotFound, ValueError, KeyError, TypeError):
            old = json.loads(self.storage.get(key))["version"]
            previous = old if isinstance(old, int) and not isinstance(old, bool) else None
        body = {
            "version": version,
            "sha256": manifest.sha256,
            "manifest_sha256": manifest_digest(manifest),
            "previous": previous,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        self.storage.put(key, json.dumps(body).encode(), content_type="application/json")
        log.info("alias %s@%s -> %d (was %s)", name, alias, version, previous)

    # ---- pulling ----------------------------------------------------------------------------
    def pull(self, ref: str | ResolvedModel) -> PulledModel:
        """A local, sha256-verified copy of the model file (downloaded once per sha256)."""
        resolved = ref if isinstance(ref, ResolvedModel) else self.resolve(ref)
        pinned = {"the pinned model": resolved.manifest_sha256}
        manifest = self.verified_manifest(resolved.name, resolved.version, pinned)
        if manifest.sha256 != resolved.sha256:
            raise ModelIntegrityError(
                f"{resolved.ref}: manifest sha256 {manifest.sha256[:12]}… differs from the pinned "
                f"{resolved.sha256[:12]}…; the version was rewritten after it was resolved"
            )
        target = self.cache_dir / manifest.sha256 / manifest.file
        self._fetch_verified(resolved, manifest.file, manifest.sha256, target, "model file")
        shift_path = None
        if manifest.shift is not None:
            shift_path = target.parent / f"{manifest.shift.sha256[:16]}-{manifest.shift.file}"
            self._fetch_verified(
                resolved, manifest.shift.file, manifest.shift.sha256, shift_path, "shift reference"
            )
        return PulledModel(target, manifest, shift_path)

    def _fetch_verified(
        self, resolved: ResolvedModel, file: str, sha256: str, target: Path, what: str
    ) -> None:
        """A cached copy whose hash is right, else a fresh download that must match ``sha256``."""
        if target.exists():
            if sha256_file(target) == sha256:
                return
            log.warning("cached %s of %s is corrupt; downloading again", what, resolved.ref)
            target.unlink()
        self._download_verified(resolved, file, sha256, target, what)

    def _download_verified(
        self, resolved: ResolvedModel, file: str, sha256: str, target: Path, what: str
    ) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                self.storage.open(self._version_key(resolved.name, resolved.version, file)) as source,
            ):
                while block := source.read(_BLOCK):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != sha256:
                raise ModelIntegrityError(
                    f"{what} of {resolved.ref} has sha256 {digest.hexdigest()}, but its "
                    f"manifest says {sha256}: refused (tampered or corrupt)"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _checked_shift(shift: tuple[ShiftSpec, bytes] | None) -> ShiftSpec | None:
    """The reference's spec with the sha256 and size of the bytes actually published."""
    if shift is None:
        return None
    spec, data = shift
    return spec.model_copy(update={"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)})
