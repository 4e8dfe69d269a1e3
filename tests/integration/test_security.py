"""Security properties shown against the real cluster: the broker refuses pickle, credentials
never leak into logs or outputs, patient identifiers are never stored in clear."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from kombu import Exchange, Queue
from pydantic import SecretStr

from cxr.core.privacy import hash_identifier
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from tests import services
from tests import worker_support as support
from tests.dicom_files import IDENTIFIERS, make_dicom
from tests.integration.test_scheduler_celery import cxr, publish
from worker.app import CLASSIFY_CHUNK, make_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PG_PASSWORD = "KNOWN-PG-PASSWORD-7f3a"
SALT = "KNOWN-SALT-93be01"


class _TouchOnUnpickle:
    """Unpickling this creates ``path``: proof that a pickled message was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_the_worker_refuses_a_pickled_message_and_does_not_run_it(cluster_settings, celery_worker, tmp_path):
    marker = tmp_path / "pickle-was-executed"
    app = make_app(cluster_settings)
    queue = Queue("gpu", Exchange("gpu"), routing_key="gpu")
    with app.connection_for_write() as connection:
        producer = connection.Producer(serializer="pickle")
        producer.publish(
            [[], {"payload": _TouchOnUnpickle(marker)}, {}],
            exchange=queue.exchange,
            routing_key="gpu",
            declare=[queue],
            headers={
                "task": CLASSIFY_CHUNK,
                "id": str(uuid.uuid4()),
                "lang": "py",
                "argsrepr": "",
                "kwargsrepr": "",
            },
        )
    assert pickle.loads(pickle.dumps(_TouchOnUnpickle(tmp_path / "control"))) is None  # the payload works
    assert (tmp_path / "control").exists()

    def refused() -> bool:
        text = celery_worker.read_text(errors="replace")
        return "ContentDisallowed" in text or "Refusing to deserialize" in text

    support.wait_for(refused, 30, "the worker to refuse the pickled message", log_path=celery_worker)
    assert not marker.exists(), "the worker unpickled the message"
    assert "pickle" in celery_worker.read_text(errors="replace")


@pytest.fixture
def secret_settings(cluster_settings: Settings) -> Settings:
    """The cluster with a password in the database URL (trust auth ignores it) and a known salt."""
    url = cluster_settings.database_url.replace("postgres@", f"postgres:{PG_PASSWORD}@", 1)
    assert PG_PASSWORD in url
    return cluster_settings.model_copy(update={"database_url": url, "patient_id_salt": SecretStr(SALT)})


def _secrets(settings: Settings) -> list[str]:
    return [
        PG_PASSWORD,
        SALT,
        settings.s3_secret_access_key.get_secret_value(),
    ]


def _dump_database(url: str) -> str:
    """Every row of every table, every column, as text."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            tables = sa.MetaData()
            tables.reflect(connection)
            return "\n".join(
                repr(tuple(row))
                for table in tables.sorted_tables
                for row in connection.execute(table.select())
            )
    finally:
        engine.dispose()


def _dump_bucket(settings: Settings) -> str:
    """Every object key in the store's bucket and every object's bytes, as text."""
    bucket = open_store(settings.storage_url.rsplit("/", 1)[0], settings)
    parts = []
    for info in bucket.list(""):
        parts.append(info.key)
        parts.append(bucket.get(info.key).decode("latin-1"))
    return "\n".join(parts)


def test_no_credential_or_patient_identifier_leaks_anywhere(secret_settings, tmp_path):
    settings = secret_settings
    log_path = tmp_path / "worker.log"
    worker = support.start_worker(settings, tmp_path / "worker-data", log_path)
    try:
        support.wait_for(lambda: support.worker_ready(log_path), 90, "worker ready", worker, log_path)
        publish(settings, tmp_path, "sec")
        archive = tmp_path / "archive"
        archive.mkdir()
        pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7) % 4096
        (archive / "frontal.dcm").write_bytes(make_dicom(pixels))
        (archive / "lateral.dcm").write_bytes(make_dicom(pixels, view="LL"))  # a failure row
        (archive / "plain.png").write_bytes(support.synthetic_png(3, (64, 64)))
        (archive / "broken.png").write_bytes(support.CORRUPT)
        report = tmp_path / "out" / "report.html"
        scored = cxr(settings, tmp_path / "cli", "score", str(archive), "--model", "sec@production",
                     "--wait", "--json", "--report", str(report))  # fmt: skip
        out, err = scored.communicate(timeout=180)
        assert scored.returncode == 0, err.decode(errors="replace")[-3000:]
        config = cxr(settings, tmp_path / "cli", "config").communicate(timeout=60)
        wrong = settings.model_copy(update={"s3_secret_access_key": "WRONG-SECRET-c0ffee"})
        bucket_uri = settings.storage_url.rsplit("/", 1)[0]
        refused = cxr(wrong, tmp_path / "cli", "score", f"{bucket_uri}/archive", "--model", "sec@production")
        refused_out, refused_err = refused.communicate(timeout=120)
    finally:
        services.stop_process(worker)

    assert refused.returncode != 0
    assert refused_err.strip(), "the S3 error must say something"
    texts = {
        "worker log": log_path.read_text(errors="replace"),
        "cxr score": (out + err).decode(errors="replace"),
        "cxr config": b"".join(config).decode(errors="replace"),
        "S3 error": (refused_out + refused_err).decode(errors="replace"),
        "HTML report": report.read_text(errors="replace"),
        "store": _dump_bucket(settings),
        "database": _dump_database(settings.database_url),
    }
    assert "Research use only" in texts["HTML report"] and "uri,sha256" in texts["store"]
    assert "***" in texts["cxr config"]
    leaks = [
        f"{secret!r} in {where}"
        for where, text in texts.items()
        for secret in [*_secrets(settings), "WRONG-SECRET-c0ffee"]
        if secret in text
    ]
    assert not leaks, leaks

    names = ("PatientName", "PatientID", "PatientBirthDate")
    identifiers = [*(IDENTIFIERS[name] for name in names), "Jane", "0042-SECRET"]
    leaks = [
        f"{value!r} in {where}" for where, text in texts.items() for value in identifiers if value in text
    ]
    assert not leaks, leaks
    patient_hash = hash_identifier(IDENTIFIERS["PatientID"], settings)
    assert f"'{patient_hash}'" in texts["database"]  # images.patient_id_hash, salted
