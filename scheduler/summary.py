"""What a job did, from SQL alone: counters, labels, failures, throughput, per-image rows."""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select

from cxr.core.db.models import CLASSIFICATION, Artifact, Failure, Image, Job, JobImage, Prediction
from cxr.core.db.session import session_scope
from cxr.core.errors import PermanentError
from cxr.core.outcomes import Outcome
from cxr.core.privacy import JOIN_KEY_COLUMNS
from cxr.core.settings import Settings
from cxr.explain.shortcut import summarize_shortcut_scores
from scheduler.shift_verdict import shift_verdict

PREDICTION_KIND = CLASSIFICATION


@dataclass(frozen=True)
class ImageRow:
    """One image of a job, for the CSV report."""

    uri: str
    sha256: str | None
    outcome: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    failure_stage: str | None
    failure_reason: str | None
    skip_reason: str | None
    shift_percentile: float | None
    out_of_distribution: bool | None
    #: Salted hashes of the DICOM study, series and instance UIDs and the accession number, in
    #: ``JOIN_KEY_COLUMNS`` order (None for non-DICOM images and images never scored).
    join_keys: tuple[str | None, ...] = ()


def _prediction_join(job: Job) -> Any:
    return and_(
        Prediction.image_sha256 == JobImage.image_sha256,
        Prediction.model_name == job.model_name,
        Prediction.model_version == job.model_version,
        Prediction.kind == PREDICTION_KIND,
    )


def get_job(settings: Settings, job_id: str) -> Job:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise PermanentError(f"no job {job_id!r}")
        session.expunge(job)
        return job


@dataclass(frozen=True)
class Explained:
    """What a job's explanation of one image says: the class explained, its shortcut score (None
    for an empty heatmap) and the overlay's URI."""

    label: str | None
    shortcut_score: float | None
    overlay_uri: str


def explanations(settings: Settings, job: Job, sha256s: Sequence[str] | None = None) -> dict[str, Explained]:
    """The job's explained images (all, or those of ``sha256s``) for the job's model version,
    by image sha256: one query, read by the CSV, the report's gallery and the shortcut summary."""
    statement = (
        select(Artifact.image_sha256, Artifact.uri, Artifact.params)
        .join(JobImage, JobImage.image_sha256 == Artifact.image_sha256)
        .where(JobImage.job_id == job.id, Artifact.kind == "overlay")
    )
    if sha256s is not None:
        statement = statement.where(Artifact.image_sha256.in_(list(sha256s)))
    with session_scope(settings) as session:
        rows = session.execute(statement).all()
    out: dict[str, Explained] = {}
    for sha256, uri, params in rows:
        params = params or {}
        if params.get("model") != job.model_name or params.get("model_version") != job.model_version:
            continue
        score = params.get("shortcut_score")
        label = params.get("label")
        out.setdefault(
            sha256,
            Explained(
                label if isinstance(label, str) else None,
                float(score) if isinstance(score, int | float) else None,
                uri,
            ),
        )
    return out


def shortcut_scores(settings: Settings, job: Job) -> list[float]:
    """Shortcut scores of the job's explained images, for the job's model version."""
    return [e.shortcut_score for e in explanations(settings, job).values() if e.shortcut_score is not None]


def job_summary(settings: Settings, job_id: str, failure_limit: int = 1000) -> dict[str, Any]:
    """The summary `cxr score --wait --json` prints and the report shows."""
    job = get_job(settings, job_id)
    with session_scope(settings) as session:
        by_label = dict(
            session.execute(
                select(Prediction.label, func.count())
                .select_from(JobImage)
                .join(Prediction, _prediction_join(job))
                .where(JobImage.job_id == job_id, JobImage.outcome.in_([Outcome.SCORED, Outcome.SKIPPED]))
                .group_by(Prediction.label)
                .order_by(Prediction.label)
            ).all()
        )
        failures = session.execute(
            select(Failure.image_uri, Failure.stage, Failure.reason)
            .where(Failure.job_id == job_id)
            .order_by(Failure.id)
        ).all()
        shift_rows = session.execute(
            select(Prediction.shift_score, Prediction.out_of_distribution)
            .select_from(JobImage)
            .join(Prediction, _prediction_join(job))
            .where(
                JobImage.job_id == job_id,
                JobImage.outcome.in_([Outcome.SCORED, Outcome.SKIPPED]),
                Prediction.shift_score.is_not(None),
            )
        ).all()
        skips = dict(
            session.execute(
                select(JobImage.reason, func.count())
                .where(JobImage.job_id == job_id, JobImage.outcome == Outcome.SKIPPED)
                .group_by(JobImage.reason)
            ).all()
        )
    end = job.finished_at or dt.datetime.now(dt.UTC)
    start = job.created_at if job.created_at.tzinfo else job.created_at.replace(tzinfo=dt.UTC)
    end = end if end.tzinfo else end.replace(tzinfo=dt.UTC)
    seconds = max((end - start).total_seconds(), 1e-9)
    reasons = collections.Counter(reason for _, _, reason in failures)
    handled = job.scored + job.skipped + job.failed
    return {
        "job_id": job.id,
        "status": job.status.value,
        "source": job.source,
        "model": f"{job.model_name}@{job.model_version}",
        "model_sha256": job.model_sha256,
        "total": job.total,
        "scored": job.scored,
        "skipped": job.skipped,
        "failed": job.failed,
        "by_label": by_label,
        "failures_by_reason": dict(reasons.most_common()),
        "skipped_by_reason": {
            reason or "unknown": n for reason, n in sorted(skips.items(), key=lambda kv: -kv[1])
        },
        "failures": [
            {"uri": uri, "stage": stage, "reason": reason} for uri, stage, reason in failures[:failure_limit]
        ],
        "seconds": round(seconds, 3),
        "images_per_second": round(handled / seconds, 3),
        "shortcut": summarize_shortcut_scores(shortcut_scores(settings, job)).to_dict(),
        "shift": _shift(settings, job, shift_rows),
        "report": job.report_uri,
        "csv": job.csv_uri,
        "error": job.error,
        "created_at": start.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def _shift(settings: Settings, job: Job, rows: Sequence[Any]) -> dict[str, Any] | None:
    """The per-job shift verdict from the job's (score, flag) rows; None for a model without a
    shift reference."""
    from modelstore import open_model_store

    spec = open_model_store(settings, catalogue=False).manifest(job.model_name, job.model_version).shift
    if spec is None:
        return None
    scores = [score for score, _ in rows]
    flagged = sum(1 for _, ood in rows if ood)
    verdict = shift_verdict(flagged, len(rows), spec.expected_flag_rate, scores, spec.validation_scores)
    return verdict.to_dict() | {"threshold_percentile": spec.threshold_percentile}


def image_rows(settings: Settings, job_id: str, batch: int = 1000) -> Iterator[ImageRow]:
    """Every image of the job with its prediction or failure, streamed in URI order."""
    job = get_job(settings, job_id)
    statement = (
        select(
            JobImage.uri,
            JobImage.image_sha256,
            JobImage.outcome,
            Prediction.label,
            Prediction.confidence,
            Prediction.probabilities,
            Failure.stage,
            Failure.reason,
            JobImage.reason,
            Prediction.shift_percentile,
            Prediction.out_of_distribution,
            *(getattr(Image, column) for column in JOIN_KEY_COLUMNS),
        )
        .select_from(JobImage)
        .outerjoin(Prediction, _prediction_join(job))
        .outerjoin(Image, Image.sha256 == JobImage.image_sha256)
        .outerjoin(Failure, and_(Failure.job_id == JobImage.job_id, Failure.image_uri == JobImage.uri))
        .where(JobImage.job_id == job_id)
        .order_by(JobImage.uri)
        .execution_options(yield_per=batch)
    )
    n_keys = len(JOIN_KEY_COLUMNS)
    with session_scope(settings) as session:
        for row in session.execute(statement):
            yield ImageRow(*row[:-n_keys], join_keys=tuple(row[-n_keys:]))
