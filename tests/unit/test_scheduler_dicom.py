"""DICOM archives through the main job: frontal films scored, laterals refused with a reason,
and no identifying value stored anywhere (database, objects, logs)."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np
import pytest

from cxr.core.db.session import dispose_engines
from cxr.core.privacy import hash_identifier
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from scheduler.report import write_report
from scheduler.submit import submit
from scheduler.summary import job_summary
from tests import worker_support as support
from tests.dicom_files import IDENTIFIERS, make_dicom

RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = support.embedded_with_tiny_model(tmp_path, patient_id_salt="test-salt")
    yield settings
    dispose_engines()


def test_dicom_archive_scored_with_identifiers_only_hashed(settings, tmp_path, caplog):
    archive = tmp_path / "dicom"
    archive.mkdir()
    (archive / "frontal.dcm").write_bytes(make_dicom(RAMP, view="PA"))
    (archive / "inverted.dcm").write_bytes(make_dicom(RAMP[:, ::-1], photometric="MONOCHROME1", view="AP"))
    (archive / "windowed.dcm").write_bytes(make_dicom(RAMP.T.copy(), window=(2048, 1024)))
    (archive / "lateral.dcm").write_bytes(make_dicom(RAMP, view="LL"))
    caplog.set_level(logging.DEBUG)

    job = submit(settings, str(archive), "tiny@production", explain="all")
    summary = job_summary(settings, job.job_id)
    write_report(settings, job.job_id, tmp_path / "report.html")

    assert (summary["total"], summary["scored"], summary["skipped"], summary["failed"]) == (4, 3, 1, 0)
    assert summary["failures"] == []  # a lateral view is a policy decision: skipped, not failed
    ((reason, count),) = summary["skipped_by_reason"].items()
    assert "not frontal" in reason and count == 1

    database = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
    dump = "\n".join(database.iterdump())
    assert hash_identifier(IDENTIFIERS["PatientID"], settings) in dump  # the hash is what is kept
    store = open_store(settings=settings)
    objects = [(info.key, store.get(info.key)) for info in store.list()]
    assert objects, "the job wrote reports and artifacts"
    texts = [dump, caplog.text, (tmp_path / "report.html").read_text()]
    texts += [key for key, _ in objects]
    for value in (IDENTIFIERS[tag] for tag in ("PatientName", "PatientID", "PatientBirthDate",
                                              "StudyInstanceUID", "SOPInstanceUID")):  # fmt: skip
        assert not any(value in text for text in texts), value
        assert not any(value.encode() in data for _, data in objects), value
