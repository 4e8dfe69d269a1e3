"""All configuration, in one typed object read from ``CXR_*`` environment variables.

The embedded defaults need no server at all: SQLite at ``$CXR_DATA_DIR/cxr.db`` and a local
object store at ``$CXR_DATA_DIR/objects``; with no broker, tasks run in-process. Production points
the same names at PostgreSQL, Redis and S3/MinIO. Objects are built *from* this (``open_store``,
``make_engine``), never from loose CLI dictionaries.

Credentials come only from the environment (``CXR_S3_*`` or boto3's own ``AWS_*`` chain) and are
held as ``SecretStr`` so that printing a ``Settings`` never shows them.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SECRET_MASK = "***"

#: Defaults of ``inference_batch_size`` and ``decode_threads`` left at 0 (``Settings.batch_size_for``).
CPU_BATCH_SIZE, GPU_BATCH_SIZE, CPU_DECODE_THREADS = 8, 32, 2


class Settings(BaseSettings):
    """The effective configuration. Every field maps to ``CXR_<FIELD_NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore", validate_default=True)

    data_dir: Path = Field(
        default=Path("cxr-data"),
        description="Root of every embedded default (SQLite file, local object store, model "
        "cache); moving it moves them all.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Unset: sqlite:///$CXR_DATA_DIR/cxr.db. Production: "
        "postgresql+psycopg2://user:pass@host/db.",
    )
    storage_url: str | None = Field(
        default=None,
        description="Where models, artifacts and reports live: file:///abs/path or "
        "s3://bucket/prefix. Unset: file://$CXR_DATA_DIR/objects.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (MinIO, SeaweedFS); unset for AWS itself.",
    )
    s3_region: str = Field(default="us-east-1", description="Region used to sign S3 requests.")
    s3_access_key_id: SecretStr | None = Field(
        default=None,
        description="S3 access key; unset falls back to boto3's chain (AWS_ACCESS_KEY_ID, ...).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret key; unset falls back to boto3's chain."
    )
    s3_max_attempts: int = Field(
        default=8,
        ge=1,
        description="boto3 'standard' retry attempts per S3 call (exponential backoff with "
        "jitter); covers a storage server restarting for a few seconds.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://host:6379/0). Unset: tasks run in-process.",
    )
    model_cache_dir: Path | None = Field(
        default=None,
        description="Local cache of pulled models, keyed by sha256. Unset: $CXR_DATA_DIR/model-cache.",
    )
    patient_id_salt: SecretStr | None = Field(
        default=None,
        description="Salt for hashing patient ids and DICOM UIDs (and sealing the UIDs in "
        "dicomweb:// image URIs, so every host needs the same). Unset: a random salt is "
        "created once in $CXR_DATA_DIR/patient-id-salt (mode 0600). Set it in production so "
        "every host hashes alike.",
    )
    max_image_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="Images larger than this are refused."
    )
    max_image_pixels: int = Field(
        default=60_000_000,
        ge=1,
        description="Images whose header claims more pixels are refused before decoding "
        "(decompression bombs).",
    )
    # ---- a PACS as a source (dicomweb:// and dicomwebs://, cxr.core.dicomweb) -----------------
    dicomweb_username: str | None = Field(default=None, description="DICOMweb basic-auth user name.")
    dicomweb_password: SecretStr | None = Field(default=None, description="DICOMweb basic-auth password.")
    dicomweb_token: SecretStr | None = Field(
        default=None, description="DICOMweb bearer token (used instead of the user name and password)."
    )
    dicomweb_timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one DICOMweb request.")
    dicomweb_page_size: int = Field(
        default=500, ge=1, description="QIDO-RS results asked for per page (limit/offset paging)."
    )
    # ---- which DICOM objects are scored (cxr.core.imaging.dicom_policy); others are skipped --
    dicom_modalities: str = Field(default="CR,DX", description="DICOM modalities scored, comma-separated.")
    dicom_body_parts: str = Field(
        default="CHEST", description="BodyPartExamined values scored, comma-separated (absent is scored)."
    )
    dicom_views: str = Field(
        default="PA,AP", description="ViewPosition values scored, comma-separated (absent is scored)."
    )
    dicom_photometric: str = Field(
        default="MONOCHROME1,MONOCHROME2,RGB,YBR_FULL,YBR_FULL_422",
        description="PhotometricInterpretation values scored, comma-separated.",
    )
    dicom_skip_burned_in: bool = Field(
        default=True, description="Skip DICOM images with BurnedInAnnotation YES (text in the pixels)."
    )
    dicom_skip_derived: bool = Field(
        default=True, description="Skip DICOM images whose ImageType is DERIVED or SECONDARY."
    )
    dicom_skip_for_processing: bool = Field(
        default=True, description="Skip DICOM images whose PresentationIntentType is FOR PROCESSING."
    )
    inference_batch_size: int = Field(
        default=0,
        ge=0,
        description="Images per forward pass; 0: 8 where the model runs on the CPU (a small batch "
        "keeps a layer's activations in cache), 32 on a GPU (see ``batch_size_for``).",
    )
    decode_threads: int = Field(
        default=0,
        ge=0,
        description="Threads that fetch and decode while the model infers; 0: 2 where the model "
        "runs on the CPU (it needs the cores), else one per core of this process's share: on a GPU "
        "worker decoding is all the CPU does (see ``decode_threads_for``).",
    )
    shift_policy: Literal["flag", "abstain"] = Field(
        default="flag",
        description="What happens to an image the model's shift reference flags as unlike its "
        "training data: flag (it keeps its label and carries the flag everywhere the label goes) "
        "or abstain (no label: skipped with the reason).",
    )
    decode_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Longest one image may take to fetch and decode (about a second for a "
        "4k×4k DICOM). Past it the image fails with stage decode and the chunk goes on; the "
        "stuck decoder keeps its thread until it returns, and new images get fresh threads.",
    )
    decode_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="How much nicer than the model the decode threads run (Linux), so that "
        "decoding takes the CPU the model leaves idle instead of slowing it; 0 turns it off.",
    )
    inference_threads: int = Field(
        default=0,
        ge=0,
        description="TensorFlow threads (intra- and inter-op) per worker process. 0: the cores "
        "this process may run on divided by the worker's prefork processes (--concurrency), at "
        "least 1, so that the processes of one worker never fight over the cores.",
    )
    chunk_size: int = Field(default=64, ge=1, description="Images per task sent to a worker.")
    model_cache_size: int = Field(
        default=2, ge=1, description="Models held in memory per worker process (LRU)."
    )
    broker_key_prefix: str = Field(
        default="",
        description="Prefix of every Redis key the broker uses (kombu 'global_keyprefix'), so "
        "two deployments or test runs can share one Redis without seeing each other's queues.",
    )
    task_time_limit_s: int = Field(
        default=1800,
        ge=10,
        description="Hard time limit of one chunk task (the worker child is killed past it). "
        "The soft limit is 90% of it; the Redis visibility timeout is derived from it.",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        description="Times a chunk may be started without finishing (its worker died or was "
        "killed) before its images are recorded as failures instead of retried forever.",
    )
    chunk_lease_s: int = Field(
        default=60,
        ge=2,
        description="Lease a worker holds on a running chunk, renewed every third of it while "
        "the chunk runs. A delivery that finds a live lease is a duplicate (deferred, not "
        "counted); a lease that ran out without being released means its holder died.",
    )
    wait_stall_warn_s: int = Field(
        default=120,
        ge=1,
        description="`cxr score --wait` warns (and says what to run) after this many seconds "
        "without progress: no worker taking the queued chunks, or chunks lost with the broker.",
    )
    task_max_retries: int = Field(
        default=6,
        ge=0,
        description="Retries of a chunk after a transient error (storage or database "
        "unreachable), with exponential backoff and jitter between them.",
    )
    retry_backoff_s: float = Field(
        default=2.0, gt=0, description="First retry delay; doubles on each retry (with jitter)."
    )
    retry_backoff_max_s: float = Field(default=300.0, gt=0, description="Cap of the retry delay.")
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Base port of the worker's Prometheus endpoint; each worker process serves "
        "on base + its pool index (solo / -c 1: the base port). 0 disables the endpoint.",
    )
    exporter_port: int = Field(
        default=9800,
        ge=1,
        le=65535,
        description="Port of the cluster-state exporter (`cxr exporter`): queue depths, jobs, "
        "pending images and prediction shares read from Redis and SQL.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")

    # ---- the web front door (`cxr web`) -----------------------------------------------------
    web_token: SecretStr | None = Field(
        default=None,
        description="Secret that `cxr web` requires: the API takes it as `Authorization: Bearer "
        "...`, the pages through a login form. Unset: `cxr web` refuses to start (on a loopback "
        "address, `cxr web --generate-token` makes a one-off token instead).",
    )
    web_host: str = Field(
        default="127.0.0.1",
        description="Address `cxr web` binds. Only this machine by default; put a TLS proxy in "
        "front before binding anything else.",
    )
    web_port: int = Field(default=8080, ge=1, le=65535, description="Port `cxr web` listens on.")
    web_model: str = Field(
        default="cxr@production",
        description="Model an upload or `POST /api/v1/predict` uses when it names none (NAME@REF).",
    )
    web_max_upload_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1,
        description="Largest film accepted by an upload (413 past it); a DICOM of 4k×4k at 16 "
        "bits is 32 MiB.",
    )
    web_max_upload_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="Most pixels an uploaded film may claim in its header (422 past it), checked "
        "before decoding: a 5k×5k film, far above any radiograph.",
    )
    web_cookie_secure: bool = Field(
        default=False,
        description="Mark the session cookie Secure (sent over HTTPS only): set it when `cxr web` "
        "is reached through a TLS proxy. A request that arrives over HTTPS gets it anyway.",
    )
    web_session_hours: float = Field(
        default=8.0, gt=0, description="How long a login to the web pages lasts (one shift)."
    )

    # ---- scheduled retraining (Celery beat → queue 'train') --------------------------------
    retrain_schedule: str | None = Field(
        default=None,
        description="Crontab 'minute hour day-of-month month day-of-week' (e.g. '0 3 * * 0' = "
        "Sundays 03:00 UTC) on which beat sends a retraining task. Unset: no scheduled retraining.",
    )
    retrain_data: str | None = Field(
        default=None, description="Training data for scheduled runs: folder, manifest CSV or s3://."
    )
    retrain_extra_data: str | None = Field(
        default=None,
        description="Comma-separated labelled manifests (a site's films, labelled after `cxr jobs "
        "sample`) trained on beside CXR_RETRAIN_DATA, so a site's labels keep counting.",
    )
    retrain_eval_data: str | None = Field(
        default=None,
        description="The fixed evaluation set on which a new model must not be worse than the "
        "current one. Keep it apart from the training data.",
    )
    retrain_model_name: str = Field(default="cxr", description="Model name scheduled runs publish.")
    retrain_arch: str = Field(default="mobilenetv2", description="Architecture for scheduled runs.")
    retrain_weights: str = Field(default="none", description="none | imagenet | PATH to a weights file.")
    retrain_classes: str = Field(default="covid,normal,pneumonia", description="Classes, comma-separated.")
    retrain_image_size: int = Field(default=224, ge=16, description="Input size for scheduled runs.")
    retrain_epochs: int = Field(default=20, ge=1, description="Epoch limit (early stopping applies).")
    retrain_recipe: str | None = Field(
        default=None,
        description="A named training recipe for scheduled runs (training_jobs/recipes.py; "
        "'generalise': the best leave-source-out recipe, which needs lungs@production in the store). "
        "It sets head, fine-tuning, lung step and de-shortcut copies; a CXR_RETRAIN_WEIGHTS other "
        "than none wins over its weights.",
    )
    promotion_alias: str = Field(default="production", description="The alias the gate may move.")
    promotion_metric: str = Field(
        default="macro_f1",
        description="Metric the gate compares (a headline figure: macro_f1, macro_auc, accuracy, "
        "covid_auc, covid_sensitivity, ...); higher is better.",
    )
    promotion_margin: float = Field(
        default=0.0,
        ge=0.0,
        description="The candidate is promoted if its metric >= the current model's - margin.",
    )

    @field_validator("storage_url")
    @classmethod
    def _storage_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("file", "s3"):
            raise ValueError(f"CXR_STORAGE_URL must be file:///path or s3://bucket/prefix, got {value!r}")
        return value

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        root = self.data_dir.expanduser().absolute()
        self.data_dir = root
        if self.database_url is None:
            self.database_url = f"sqlite:///{root / 'cxr.db'}"
        if self.storage_url is None:
            self.storage_url = (root / "objects").as_uri()
        if self.model_cache_dir is None:
            self.model_cache_dir = root / "model-cache"
        return self

    @property
    def visibility_timeout_s(self) -> int:
        """Seconds Redis waits for an unacknowledged chunk before handing it to another worker.

        Four times the hard task limit: a chunk can never still be running when it is
        delivered again (the design asks for at least three times the longest chunk).
        """
        return 4 * self.task_time_limit_s

    def batch_size_for(self, model_on_cpu: bool) -> int:
        """``inference_batch_size``, or its default for where the model runs."""
        return self.inference_batch_size or (CPU_BATCH_SIZE if model_on_cpu else GPU_BATCH_SIZE)

    def decode_threads_for(self, model_on_cpu: bool, cores: int) -> int:
        """``decode_threads``, or its default: ``CPU_DECODE_THREADS`` beside a model on the CPU
        (measured best on 2 cores, docs/WORKER.md), else one per core (``cores``: this process's
        share), at least that many."""
        if self.decode_threads:
            return self.decode_threads
        return CPU_DECODE_THREADS if model_on_cpu else max(CPU_DECODE_THREADS, cores)

    @property
    def in_process(self) -> bool:
        """True when no broker is configured: tasks run inside the calling process."""
        return not self.broker_url

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, every secret (and URL password) masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = _SECRET_MASK
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            out[name] = value
        return out


def mask_url(url: str) -> str:
    """Replace the password in ``scheme://user:password@host/...`` with ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{_SECRET_MASK}@{netloc}"))


_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]+@")


def scrub_secrets(text: str) -> str:
    """Mask URL passwords anywhere in a free-form text (error messages, log lines)."""
    return _URL_PASSWORD.sub(rf"\1{_SECRET_MASK}@", text)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings (tests and CLI options that change the environment)."""
    get_settings.cache_clear()
    return get_settings()
