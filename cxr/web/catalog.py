"""What the pages and the API read: jobs from SQL and models from the model store.

Read-only; a job's summary, CSV and report come from the scheduler's own functions
(``scheduler.summary``, ``scheduler.report``), so the web shows what the CLI prints.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cxr.core.db.models import Job, JobStatus
from cxr.core.db.session import session_scope
from cxr.core.errors import CxrError
from cxr.core.settings import Settings
from modelstore import open_model_store
from scheduler.model_card import figures_with_intervals

UNFINISHED = (JobStatus.PENDING, JobStatus.RUNNING)


def job_row(job: Job) -> dict[str, Any]:
    """A job as the list shows it (counts and progress; no per-image data)."""
    handled = job.scored + job.skipped + job.failed
    return {
        "job_id": job.id,
        "status": job.status.value,
        "source": job.source,
        "model": f"{job.model_name}@{job.model_version}",
        "total": job.total,
        "scored": job.scored,
        "skipped": job.skipped,
        "failed": job.failed,
        "done": handled,
        "progress": round(handled / job.total, 4)
        if job.total
        else (1.0 if job.status == JobStatus.FINISHED else 0.0),
        "report": job.report_uri,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def list_jobs(settings: Settings, limit: int = 100) -> list[dict[str, Any]]:
    """The newest jobs first."""
    with session_scope(settings) as session:
        jobs = session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)).all()
        return [job_row(job) for job in jobs]


def metric_rows(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline figures of one metric record, each with its 95 % bootstrap interval when the
    record has one (``ci95``): the report's model card figures (``scheduler.model_card``)."""
    return [
        {"name": row["name"], "value": row["value"], "ci95": row["ci"]}
        for row in figures_with_intervals(values)
    ]


def model_version(manifest: Any) -> dict[str, Any]:
    """One version's card: what it is, what it was measured on (with intervals), how it decides."""
    return {
        "ref": manifest.ref,
        "version": manifest.version,
        "architecture": manifest.architecture,
        "classes": manifest.classes,
        "output": manifest.output,
        "input": {
            "height": manifest.input.height,
            "width": manifest.input.width,
            "channels": manifest.input.channels,
            "normalization": manifest.input.normalization,
            "lung_crop": manifest.input.lung_crop,
        },
        "created_at": manifest.created_at.isoformat(),
        "sha256": manifest.sha256,
        "parent_version": manifest.parent_version,
        "training_data_fingerprint": manifest.training_data_fingerprint,
        "metrics": [
            {
                "dataset": record.dataset,
                "n": record.n,
                "figures": metric_rows(record.values),
                "measured_at": record.measured_at.isoformat(),
            }
            for record in manifest.metrics
        ],
        "operating_points": {
            name: {
                "threshold": point.threshold,
                "target_sensitivity": point.target_sensitivity,
                "validation_sensitivity": point.validation_sensitivity,
                "validation_specificity": point.validation_specificity,
            }
            for name, point in manifest.operating_points.items()
        },
        "shift": None
        if manifest.shift is None
        else {
            "method": manifest.shift.method,
            "threshold_percentile": manifest.shift.threshold_percentile,
            "n_train": manifest.shift.n_train,
        },
        "intended_use": manifest.intended_use,
        "description": manifest.description,
    }


def list_models(settings: Settings) -> dict[str, Any]:
    """Every model with its versions (newest first), aliases, and any broken document named
    (a broken model or alias never hides the others, as in ``cxr models list``)."""
    store = open_model_store(settings, catalogue=False)
    models, problems = [], []
    for name in store.names():
        versions = []
        for number in reversed(store.versions(name)):
            try:
                versions.append(model_version(store.manifest(name, number)))
            except CxrError as exc:
                problems.append(f"model {name}@{number}: {exc}")
        broken = store.alias_problems(name)
        problems.extend(f"alias {name}@{alias}: {why}" for alias, why in sorted(broken.items()))
        models.append({"name": name, "aliases": store.aliases(name), "versions": versions})
    return {"models": models, "problems": problems}


def model_refs(settings: Settings) -> list[str]:
    """Choices for the upload form: every alias, then every version, of every model."""
    store = open_model_store(settings, catalogue=False)
    refs = []
    for name in store.names():
        refs.extend(f"{name}@{alias}" for alias in sorted(store.aliases(name)))
        refs.extend(f"{name}@{v}" for v in reversed(store.versions(name)))
    return refs
