"""The reads behind the exporter: one Redis pipeline and a few SQL aggregates, no ids anywhere.

Each function takes an open client or connection and returns plain data, so the collector can
turn a failed source into ``cxr_exporter_source_up 0`` and tests can check the reads alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from sqlalchemy import Connection, case, func, select

from cxr.core.db.models import (
    CLASSIFICATION,
    Artifact,
    Job,
    JobStatus,
    ModelVersion,
    Prediction,
    PromotionDecision,
    TrainingRun,
)

PREDICTION_KIND = CLASSIFICATION

#: The statuses ``training_jobs.records`` writes; listed so each is exported (at zero) from the start.
TRAINING_STATUSES: tuple[str, ...] = ("running", "finished", "failed")

#: A shortcut score is a share in [0, 1] (how much of a heatmap's mass lies outside the lungs);
#: tenths are enough to see a distribution drift towards 1.
SHORTCUT_SCORE_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def queue_keys(prefix: str, queue: str) -> list[str]:
    """The Redis lists kombu keeps for one queue: the queue itself, then one per priority step.

    kombu's ``global_keyprefix`` is prepended to every key, so the list is ``<prefix><queue>``;
    messages sent with a priority land in ``<prefix><queue>\\x06\\x16<step>``.
    """
    return [f"{prefix}{queue}{Channel.sep}{step}" if step else f"{prefix}{queue}" for step in PRIORITY_STEPS]


def queue_depths(client: redis.Redis, prefix: str, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting per Celery queue (tasks a worker has reserved are no longer listed)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(prefix, queue):
            pipe.llen(key)
    lengths = iter(pipe.execute())
    return {queue: sum(next(lengths) for _ in PRIORITY_STEPS) for queue in queues}


@dataclass(frozen=True)
class ShortcutScores:
    """Cumulative bucket counts (``le`` → count), count and sum of artifacts' shortcut scores."""

    buckets: dict[float, int]
    count: int
    total: float


@dataclass(frozen=True)
class SqlSnapshot:
    jobs_by_status: dict[str, int]
    images_pending: int
    training_runs_by_status: dict[str, int]
    model_versions: dict[str, int]
    predictions: dict[tuple[str, str, str], int]  # (model, version, label) -> count
    out_of_distribution: dict[tuple[str, str], int]  # (model, version) -> flagged predictions
    shortcut_scores: ShortcutScores
    promotion_decisions: dict[tuple[str, str], int]  # (model, promoted|kept) -> count


def read_sql(connection: Connection) -> SqlSnapshot:
    """Every SQL aggregate the exporter serves, read on one connection."""
    return SqlSnapshot(
        jobs_by_status=jobs_by_status(connection),
        images_pending=images_pending(connection),
        training_runs_by_status={
            **dict.fromkeys(TRAINING_STATUSES, 0),
            **_count_by(connection, TrainingRun.status),
        },
        model_versions=_count_by(connection, ModelVersion.name),
        predictions=prediction_counts(connection),
        out_of_distribution=out_of_distribution_counts(connection),
        shortcut_scores=shortcut_scores(connection),
        promotion_decisions=promotion_decisions(connection),
    )


def promotion_decisions(connection: Connection) -> dict[tuple[str, str], int]:
    """Gate decisions per model and outcome."""
    query = select(PromotionDecision.model_name, PromotionDecision.promoted, func.count()).group_by(
        PromotionDecision.model_name, PromotionDecision.promoted
    )
    return {
        (name, "promoted" if promoted else "kept"): count
        for name, promoted, count in connection.execute(query)
    }


def jobs_by_status(connection: Connection) -> dict[str, int]:
    counts = {status.value: 0 for status in JobStatus}
    for status, count in connection.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[JobStatus(status).value] = count
    return counts


def images_pending(connection: Connection) -> int:
    """Images of running jobs that are neither scored, skipped nor failed yet."""
    left = Job.total - Job.scored - Job.skipped - Job.failed
    query = select(func.coalesce(func.sum(left), 0)).where(Job.status == JobStatus.RUNNING)
    return max(0, int(connection.execute(query).scalar_one()))


def prediction_counts(connection: Connection) -> dict[tuple[str, str, str], int]:
    """Classifications per (model, version, predicted label): the drift panel's source."""
    query = select(Prediction.model_name, Prediction.model_version, Prediction.label, func.count())
    query = query.where(Prediction.kind == PREDICTION_KIND)
    query = query.group_by(Prediction.model_name, Prediction.model_version, Prediction.label)
    return {(name, str(version), label): count for name, version, label, count in connection.execute(query)}


def out_of_distribution_counts(connection: Connection) -> dict[tuple[str, str], int]:
    """Predictions flagged as unlike the training data, per model version: divided by the
    version's ``cxr_predictions`` total, the share of its archive it is out of its depth on."""
    query = select(Prediction.model_name, Prediction.model_version, func.count())
    query = query.where(Prediction.kind == PREDICTION_KIND, Prediction.out_of_distribution.is_(True))
    query = query.group_by(Prediction.model_name, Prediction.model_version)
    return {(name, str(version)): count for name, version, count in connection.execute(query)}


def shortcut_scores(connection: Connection) -> ShortcutScores:
    """The distribution of ``Artifact.params["shortcut_score"]`` over explained images: one per
    overlay artifact (the heatmap and ROI files of the same image carry the same score)."""
    score = Artifact.params["shortcut_score"].as_float()
    columns = [func.count(score), func.coalesce(func.sum(score), 0.0)]
    columns += [func.coalesce(func.sum(case((score <= le, 1), else_=0)), 0) for le in SHORTCUT_SCORE_BUCKETS]
    row = connection.execute(select(*columns).where(Artifact.kind == "overlay", score.is_not(None))).one()
    count, total, *cumulative = row
    return ShortcutScores(
        buckets=dict(zip(SHORTCUT_SCORE_BUCKETS, (int(c) for c in cumulative), strict=True)),
        count=int(count),
        total=float(total),
    )


def _count_by(connection: Connection, column: object) -> dict[str, int]:
    rows = connection.execute(select(column, func.count()).group_by(column))
    return {str(key): count for key, count in rows}
