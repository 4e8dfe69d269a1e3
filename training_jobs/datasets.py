"""Training and evaluation data: where the images are, what their labels and patients are.

Two layouts, local or on S3 (read through ``cxr.core.storage``, like every other byte here):

- a folder with one sub-folder per class (``covid/``, ``normal/``, ...). There are no patient
  ids, so every image counts as its own patient: a patient with two films may then land in two
  splits, and the log says so.
- a manifest CSV with at least ``path,label,patient_id`` (paths relative to the CSV's folder or
  full ``s3://``/``file://`` URIs); other columns (source, view, ...) are kept as metadata.

Each image also gets a *source* (the hospital or collection it came from; see ``entry_source``):
on public COVID sets the source nearly gives the label away, so reports break figures down by it
and leave-source-out evaluation holds whole sources back.

Images are decoded by ``decode_image`` (the worker's decoder, reduced by the same rule,
``InputContract.decode_side``) and brought to the model's size by
``preprocess`` (the worker's preprocessing) exactly once, into memory. Exact duplicates (same
sha256) are dropped before anything else sees them, so one film can never sit in both the
training and the test split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.core import progress
from cxr.core.errors import ConfigurationError, ImageError, ObjectNotFound
from cxr.core.imaging import InputContract, decode_image
from cxr.core.imaging.formats import is_image_name
from cxr.core.imaging.lungs import LungMasker
from cxr.core.imaging.preprocess import preprocess_gray
from cxr.core.settings import Settings
from cxr.core.storage import ObjectStore, open_store
from cxr.core.storage.fetch import ObjectFetcher, process_fetcher

log = logging.getLogger(__name__)

NON_PREFIX = "non-"
#: Manifest columns naming an image's source, first match wins; without one, the source is the
#: prefix of a source-prefixed patient id (``actualmed:ANON170`` → ``actualmed``).
SOURCE_COLUMNS = ("source", "site")


@dataclass(frozen=True)
class Entry:
    """One listed image before it is read: where, which raw label, which patient."""

    ref: str  # a key in the source store, or a full URI
    label: str  # the label as the source spells it (lower-cased)
    patient_id: str  # in clear, in memory only; stored anywhere only as a salted hash
    meta: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # lower-cased; None when the listing does not say (folder layout)


@dataclass
class LoadedDataset:
    """Decoded, preprocessed, de-duplicated images with their mapped labels.

    ``images`` holds ``preprocess_gray`` output (the first half of ``preprocess``): (N, H, W, 1)
    float32 in [0, 1]; channels and the model's own normalization (``finish``) are applied
    later, by the training pipeline after augmentation, or by the model runtime.
    """

    source: str
    classes: list[str]
    images: np.ndarray
    labels: np.ndarray  # (N,) int class indices into ``classes``
    patient_ids: list[str]
    sha256: list[str]
    raw_labels: list[str]
    meta: list[dict[str, str]] = field(default_factory=list)  # extra manifest columns per image
    sources: list[str | None] = field(default_factory=list)  # ``Entry.source`` per image
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.sha256, [self.classes[i] for i in self.labels])

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}


def dataset_fingerprint(hashes: Sequence[str], labels: Sequence[str]) -> str:
    """sha256 over the sorted (image sha256, label) pairs: the same images with the same labels
    give the same fingerprint whatever their names, order or location."""
    digest = hashlib.sha256()
    for image_hash, label in sorted(zip(hashes, labels, strict=True)):
        digest.update(f"{image_hash}\t{label}\n".encode())
    return digest.hexdigest()


def map_label(raw: str, classes: Sequence[str]) -> str | None:
    """The class a source label trains as, or None when it has none.

    A class spelled ``non-X`` absorbs every label other than ``X``: with ``covid,non-covid``,
    normal and pneumonia both become non-covid.
    """
    raw = raw.strip().lower()
    if raw in classes:
        return raw
    for name in classes:
        if name.startswith(NON_PREFIX) and raw != name[len(NON_PREFIX) :]:
            return name
    return None


# ---- listing ------------------------------------------------------------------------------------
def source_uri(source: str) -> str:
    """A data source as a URI: ``s3://`` and ``file://`` as given, a local path made absolute."""
    if "://" in source:
        return source
    return Path(source).expanduser().absolute().as_uri()


def _is_manifest(source: str) -> bool:
    return source.lower().endswith(".csv")


def open_source(source: str, settings: Settings) -> tuple[ObjectStore, list[Entry]]:
    """The store the images are read from and the listed entries of ``source``."""
    uri = source_uri(source)
    if _is_manifest(uri):
        root, _, name = uri.rpartition("/")
        store = open_store(root, settings)
        try:
            text = store.get(name).decode("utf-8-sig")
        except ObjectNotFound as exc:
            raise ConfigurationError(f"no manifest at {source}") from exc
        return store, list(parse_manifest(text, where=source))
    store = open_store(uri, settings)
    return store, list_folder(store, where=source)


def entry_source(patient_id: str, meta: dict[str, str]) -> str | None:
    """An image's source: a ``source`` or ``site`` column, else the prefix of a source-prefixed
    patient id (``nih:00001280`` → ``nih``), lower-cased; None when neither says.

    The one place a source is derived, so the per-source report, the leave-source-out split and
    the report's (class, source) counts can never disagree about which film came from where.
    """
    for column in SOURCE_COLUMNS:
        if meta.get(column, "").strip():
            return meta[column].strip().lower()
    prefix, sep, rest = patient_id.partition(":")
    return prefix.strip().lower() if sep and prefix.strip() and rest else None


def parse_manifest(text: str, where: str = "manifest") -> Iterable[Entry]:
    reader = csv.DictReader(io.StringIO(text))
    missing = {"path", "label", "patient_id"} - set(reader.fieldnames or ())
    if missing:
        raise ConfigurationError(
            f"{where}: missing column(s) {', '.join(sorted(missing))}; need path,label,patient_id"
        )
    for line, row in enumerate(reader, start=2):
        path, label, patient = (row.get(k, "").strip() for k in ("path", "label", "patient_id"))
        if not path or not label:
            raise ConfigurationError(f"{where} line {line}: empty path or label")
        meta = {k: v for k, v in row.items() if k not in ("path", "label", "patient_id") and k and v}
        # A row without a patient id is its own patient, keyed by its path (and names no source).
        yield Entry(
            ref=path,
            label=label.lower(),
            patient_id=patient or f"path:{path}",
            meta=meta,
            source=entry_source(patient, meta),
        )


def list_folder(store: ObjectStore, where: str = "folder") -> list[Entry]:
    """``<class>/<...>/<image>`` → entries; every image is its own patient."""
    entries = []
    for info in store.list(""):
        parts = info.key.split("/")
        if len(parts) < 2 or any(part.startswith(".") for part in parts) or not is_image_name(parts[-1]):
            continue
        entries.append(Entry(ref=info.key, label=parts[0].lower(), patient_id=f"image:{info.key}"))
    if not entries:
        raise ConfigurationError(f"{where}: no images in class sub-folders (expected <class>/<image>)")
    log.info(
        "%s: folder layout has no patient ids, so each of its %d images is treated as its own "
        "patient (films of one patient may fall into different splits)",
        where,
        len(entries),
    )
    return entries


# ---- reading ------------------------------------------------------------------------------------
def _read(store: ObjectStore, entry: Entry, fetcher: ObjectFetcher) -> bytes:
    """A manifest line may name a full URI (read with the process's one fetcher, a storage
    client per bucket) or a path relative to the manifest's own store."""
    if "://" in entry.ref:
        return fetcher.fetch(entry.ref)
    return store.get(entry.ref)


def _load_one(
    store: ObjectStore,
    entry: Entry,
    contract: InputContract,
    settings: Settings,
    lungs: LungMasker | None = None,
) -> tuple[str, np.ndarray] | str:
    """(sha256, preprocessed pixels), or the reason the image was dropped."""
    try:
        data = _read(store, entry, process_fetcher(settings))
        decoded = decode_image(
            data,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            target_side=contract.decode_side,  # as the worker decodes: the same pixels
        )
        return hashlib.sha256(data).hexdigest(), preprocess_gray(decoded.pixels, contract, lungs)
    except (ImageError, ObjectNotFound) as exc:
        log.warning("skipping %s: %s", entry.ref, exc)
        return "unreadable"


def _cores() -> int:
    """Cores this process may run on (its affinity, which containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_dataset(
    source: str,
    classes: Sequence[str],
    contract: InputContract,
    settings: Settings,
    *,
    limit: int | None = None,
    seed: int = 0,
    lungs: LungMasker | None = None,
) -> LoadedDataset:
    """List, map labels, read, de-duplicate, decode and preprocess ``source``.

    ``lungs`` is the contract's segmenter when the contract has a lung step (``preprocess``).

    ``limit`` keeps a seeded random subset of that many images (smoke runs), drawn before
    reading so that nothing else is fetched.
    """
    classes = [c.strip().lower() for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigurationError(f"need two or more distinct classes, got {classes}")
    store, entries = open_source(source, settings)
    dropped: Counter[str] = Counter()
    mapped = []
    for entry in entries:
        label = map_label(entry.label, classes)
        if label is None:
            dropped[f"label {entry.label!r} not in {','.join(classes)}"] += 1
        else:
            mapped.append((entry, label))
    if limit is not None and limit < len(mapped):
        keep = np.sort(np.random.default_rng(seed).choice(len(mapped), size=limit, replace=False))
        mapped = [mapped[i] for i in keep]
    # No model runs while a set loads: every core may decode.
    threads = settings.decode_threads_for(model_on_cpu=False, cores=_cores())
    with ThreadPoolExecutor(max_workers=threads) as pool:
        loading = pool.map(lambda pair: _load_one(store, pair[0], contract, settings, lungs), mapped)
        results = list(progress.track(loading, len(mapped), "loading films"))

    seen: set[str] = set()
    images, labels, patients, hashes, raw, meta, sources = [], [], [], [], [], [], []
    for (entry, label), result in zip(mapped, results, strict=True):
        if isinstance(result, str):
            dropped[result] += 1
            continue
        image_hash, pixels = result
        if image_hash in seen:
            dropped["exact duplicate"] += 1
            continue
        seen.add(image_hash)
        images.append(pixels)
        labels.append(classes.index(label))
        patients.append(entry.patient_id)
        hashes.append(image_hash)
        raw.append(entry.label)
        meta.append(entry.meta)
        sources.append(entry.source)
    if not images:
        raise ConfigurationError(f"{source}: no usable images for classes {','.join(classes)}")
    for reason, count in sorted(dropped.items()):
        log.warning("%s: dropped %d image(s): %s", source, count, reason)
    dataset = LoadedDataset(
        source=source,
        classes=classes,
        images=np.stack(images).astype(np.float32, copy=False),
        labels=np.asarray(labels, dtype=np.int64),
        patient_ids=patients,
        sha256=hashes,
        raw_labels=raw,
        meta=meta,
        sources=sources,
        dropped=dict(dropped),
    )
    log.info("%s: %d images of %d patients, %s", source, len(dataset), len(set(patients)), dataset.counts())
    return dataset


def describe(dataset: LoadedDataset) -> dict[str, Any]:
    """A JSON-ready summary (no patient ids) for reports, with images per (class, source) when
    the manifest names sources: where the source nearly gives the label away, a reader must see it."""
    by_source: Counter[str] = Counter()
    for label, source in zip(dataset.labels, dataset.sources, strict=True):
        if source is not None:
            by_source[f"{dataset.classes[label]} / {source}"] += 1
    return {
        "source": dataset.source,
        "n_images": len(dataset),
        "n_patients": len(set(dataset.patient_ids)),
        "per_class": dataset.counts(),
        "raw_labels": dict(Counter(dataset.raw_labels)),
        "dropped": dataset.dropped,
        "fingerprint": dataset.fingerprint,
        "per_class_and_source": dict(sorted(by_source.items())),
    }
