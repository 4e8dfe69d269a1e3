"""The SQL schema (SQLAlchemy 2.x). Alembic migrations under ``migrations/`` create it.

Conventions: ids of things users name on the command line (jobs, training runs) are short
random hex strings; timestamps are timezone-aware UTC; free-form structure (probabilities,
parameters, metrics) is JSON. Patient identifiers appear only as salted hashes.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: ``Prediction.kind`` of a classification (explanations are artifacts, not predictions).
CLASSIFICATION = "classification"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


class JobStatus(enum.StrEnum):
    PENDING = "pending"  # created, images still being enqueued
    RUNNING = "running"  # every chunk enqueued, workers scoring
    FINISHED = "finished"  # every image scored, skipped or failed
    CANCELLED = "cancelled"
    FAILED = "failed"  # the job itself could not run (e.g. its model vanished)


class ChunkStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # given up after too many deliveries; its images have failure rows


class ModelVersion(Base):
    """A catalogue row per published model version (the object store holds the files)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    architecture: Mapped[str] = mapped_column(String(64))
    classes: Mapped[list[Any]] = mapped_column(JSON)
    parent_version: Mapped[int | None] = mapped_column(Integer)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: ``modelstore.integrity.manifest_digest`` at publish: resolve and pull refuse a manifest
    #: in the object store that no longer matches it.
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingRun(Base):
    """One training job: parameters, the patient-level split, metrics and what it published."""

    __tablename__ = "training_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="running")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    split: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # patient-id hashes per split
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    report_uri: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Evaluation(Base):
    """Metrics of one model version on one dataset."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    #: None for a model that was trained but not published (its file stays with the run's report).
    model_version: Mapped[int | None] = mapped_column(Integer)
    dataset: Mapped[str] = mapped_column(Text)
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    n_images: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    report_uri: Mapped[str | None] = mapped_column(Text)
    training_run_id: Mapped[str | None] = mapped_column(ForeignKey("training_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index(None, "model_name", "model_version"),)


class Job(Base):
    """A bulk scoring job. Counters are the source of truth for progress and completion."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        default=JobStatus.PENDING,
        index=True,
    )
    source: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[int] = mapped_column(Integer)
    model_sha256: Mapped[str] = mapped_column(String(64))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    total: Mapped[int] = mapped_column(Integer, default=0)  # images found in the source
    enqueued: Mapped[int] = mapped_column(Integer, default=0)
    scored: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)  # already scored by this version
    failed: Mapped[int] = mapped_column(Integer, default=0)
    #: The HTML report and the per-image CSV, written when the job finished (``cxr.report_job``)
    #: or later by ``cxr jobs report``.
    report_uri: Mapped[str | None] = mapped_column(Text)
    csv_uri: Mapped[str | None] = mapped_column(Text)
    #: Why the job failed: its submission broke off (``scheduler.submit``), in one line.
    error: Mapped[str | None] = mapped_column(Text)
    #: ``job_identity(...)`` while the job is pending or running, NULL once it ended. Unique, so
    #: two schedulers racing to create the same job cannot both succeed: the loser resumes the
    #: winner's job (``scheduler.submit``).
    active_identity: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Chunk(Base):
    """A task's worth of images.

    A worker runs a chunk only while it holds the chunk's *lease* (``lease_owner`` until
    ``lease_expires_at``, renewed by a heartbeat while it runs, released when it ends). A delivery
    that finds a live lease or a final status is a duplicate and does no work. ``deliveries``
    counts the starts that took the lease; ``deaths`` those that took it from a holder that never
    released it (it died), so a chunk that kills its worker is given up after
    ``CXR_MAX_DELIVERIES`` deaths instead of looping forever, and duplicates never count."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    uris: Mapped[list[Any]] = mapped_column(JSON)
    status: Mapped[ChunkStatus] = mapped_column(
        Enum(ChunkStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        default=ChunkStatus.QUEUED,
    )
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    deaths: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class JobImage(Base):
    """Which image (URI) belongs to which job and what became of it there.

    Predictions are shared across jobs (unique per image and model version); this row is what
    lets a job's report list every image it covered, including the ones skipped because an
    earlier job had already scored the same bytes with the same model version.
    """

    __tablename__ = "job_images"
    __table_args__ = (UniqueConstraint("job_id", "uri"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(Text)
    image_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # cxr.core.outcomes.Outcome
    chunk_seq: Mapped[int | None] = mapped_column(Integer)
    #: Why a skipped image was not run (already scored, a lateral view); failures keep theirs
    #: in ``failures``.
    reason: Mapped[str | None] = mapped_column(Text)


class Image(Base):
    """One distinct image, by content. The same bytes under two names are one row."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_uri: Mapped[str] = mapped_column(Text)  # where it was first seen
    bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    #: Salted HMACs of DICOM identifiers (``cxr.core.privacy``), never the values: the patient,
    #: and the join keys back to the site's RIS/PACS (study, series, instance, accession number).
    patient_id_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    study_uid_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    series_uid_hash: Mapped[str | None] = mapped_column(String(64))
    sop_uid_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Prediction(Base):
    """A model version's output on one image. Unique per (image, model, version, kind), so a
    redelivered chunk rewrites nothing."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("image_sha256", "model_name", "model_version", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default=CLASSIFICATION)
    label: Mapped[str] = mapped_column(String(64), index=True)
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON)  # class -> probability
    #: How unlike the training data the image is (``modelstore.shift``): the raw distance, its
    #: percentile among the validation split's, and whether it lies beyond the model's threshold.
    #: Null for a model that ships no reference.
    shift_score: Mapped[float | None] = mapped_column(Float)
    shift_percentile: Mapped[float | None] = mapped_column(Float)
    out_of_distribution: Mapped[bool | None] = mapped_column(Boolean)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Artifact(Base):
    """A file derived from an image (heatmap, overlay, feature-map grid, ROI JSON, report)."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    uri: Mapped[str] = mapped_column(Text, unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    image_sha256: Mapped[str | None] = mapped_column(ForeignKey("images.sha256"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Failure(Base):
    """An image that could not be scored, with the stage and the reason. One row per image
    per job, so a redelivered chunk does not double it."""

    __tablename__ = "failures"
    __table_args__ = (UniqueConstraint("job_id", "image_uri"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    image_uri: Mapped[str] = mapped_column(Text)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(16))  # cxr.core.outcomes.FailureStage
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PromotionDecision(Base):
    """Whether a candidate version took over an alias, and the figures that decided it.

    Both figures are measured on the same evaluation set (same data fingerprint), so the
    comparison is like for like.
    """

    __tablename__ = "promotion_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    alias: Mapped[str] = mapped_column(String(32))
    candidate_version: Mapped[int] = mapped_column(Integer)
    incumbent_version: Mapped[int | None] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(64))
    candidate_value: Mapped[float | None] = mapped_column(Float)
    incumbent_value: Mapped[float | None] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float)
    promoted: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(Text)
    eval_dataset: Mapped[str] = mapped_column(Text)
    eval_fingerprint: Mapped[str | None] = mapped_column(String(64))
    training_run_id: Mapped[str | None] = mapped_column(ForeignKey("training_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
