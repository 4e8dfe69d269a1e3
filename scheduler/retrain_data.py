"""The training data of a scheduled retrain: the configured set plus sites' labelled manifests.

A site that labelled films for validation and ``cxr adapt`` should not lose them at the next
retrain. ``CXR_RETRAIN_EXTRA_DATA`` names their manifests; they are joined with
``CXR_RETRAIN_DATA`` into one manifest of full URIs, written under the data directory with a name
that is the hash of its content: the training run records that path, so the data behind a model
can be found again (``adapt_job.original_training_features``) and the same inputs reuse one file.
Each film keeps its source (a ``site`` column, else the patient-id prefix), so per-source
reports and leave-source-out still see where it came from; a film that had none (folder layout)
gets a patient id without a prefix, so that none is invented for it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from pathlib import Path

from cxr.core.settings import Settings
from training_jobs.datasets import open_source

log = logging.getLogger(__name__)


def extra_sources(settings: Settings) -> list[str]:
    return [s.strip() for s in (settings.retrain_extra_data or "").split(",") if s.strip()]


def combined_manifest(settings: Settings, base: str, extras: list[str]) -> str:
    """One manifest CSV (path as a full URI, label, patient_id, site) of ``base`` and ``extras``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "patient_id", "site"])
    for source in [base, *extras]:
        store, entries = open_source(source, settings)
        for entry in entries:
            uri = entry.ref if "://" in entry.ref else store.uri(entry.ref)
            patient = entry.patient_id
            if entry.source is None and ":" in patient:  # e.g. a folder's 'image:KEY': no source
                patient = "unsourced-" + hashlib.sha256(patient.encode()).hexdigest()[:16]
            writer.writerow([uri, entry.label, patient, entry.source or ""])
        log.info("retraining data: %d films from %s", len(entries), source)
    text = buffer.getvalue()
    folder = Path(settings.data_dir) / "retrain"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"manifest-{hashlib.sha256(text.encode()).hexdigest()[:16]}.csv"
    if not path.exists():
        path.write_text(text)
    return str(path)
