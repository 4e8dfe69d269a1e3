"""A PACS as the archive: a real Orthanc (DICOMweb plugin, authentication on) holding what a
hospital holds, scored through ``dicomweb://`` by the real scoring path (walk with QIDO-RS, chunks,
the worker engine fetching with WADO-RS, SQL, the report).

Frontal chest films (CR, and DX stored as JPEG lossless and JPEG 2000) are scored; a DX lateral, a
CT slice and an MR slice are skipped with their reasons; nothing fails. No patient name, id or
birth date, no UID and no credential appears in SQL, objects, logs or the report."""

from __future__ import annotations

import csv
import io
import logging
import sqlite3

import numpy as np
import pydicom
import pytest
from pydantic import SecretStr
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1

from cxr.core.db.session import dispose_engines
from cxr.core.errors import PermanentError
from cxr.core.privacy import hash_identifier
from cxr.core.settings import Settings
from cxr.core.storage import open_store, read_uri
from tests import orthanc, services
from tests import worker_support as support
from tests.dicom_codecs import compressed, encode_lossless_jpeg, with_codestream
from tests.dicom_files import IDENTIFIERS, make_dicom

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = "1.2.826.0.1.3680043.8.498.77"
TWELVE_BIT = {"BitsStored": 12, "HighBit": 11}


def _film(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, (64, 64), dtype=np.uint16)


def _instance(seed: int, study: int, series: int, **overrides: object) -> tuple[str, bytes]:
    uids = {
        "StudyInstanceUID": f"{ROOT}.{study}",
        "SeriesInstanceUID": f"{ROOT}.{study}.{series}",
        "SOPInstanceUID": f"{ROOT}.{study}.{series}.{seed}",
        "AccessionNumber": f"ACC-{study}-SECRET",
    }
    data = make_dicom(_film(seed), overrides={**TWELVE_BIT, **uids, **overrides})
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return uids["SOPInstanceUID"], buffer.getvalue()


def hospital() -> dict[str, tuple[str, bytes]]:
    """Name → (SOP instance UID, file): three studies, one with a PA and its lateral."""
    for uid in (JPEGLosslessSV1, JPEG2000Lossless):
        if not get_decoder(uid).is_available:
            services.missing_service(f"a decoder for {uid.name} (pip install -e .[dicom])")
    lossless_uid, lossless = _instance(3, 2, 1, Modality="DX", ViewPosition="AP")
    lossless = with_codestream(lossless, JPEGLosslessSV1, encode_lossless_jpeg(_film(3), 12))
    j2k_uid, j2k = _instance(4, 2, 2, Modality="DX", ViewPosition="PA", BodyPartExamined="CHEST")
    return {
        "cr-pa": _instance(1, 1, 1, Modality="CR", ViewPosition="PA"),
        "dx-lateral": _instance(2, 1, 2, Modality="DX", ViewPosition="LL"),
        "dx-jpeg-lossless": (lossless_uid, lossless),
        "dx-jpeg2000": (j2k_uid, compressed(j2k, JPEG2000Lossless)),
        "ct": _instance(5, 3, 1, Modality="CT", BodyPartExamined="CHEST", ViewPosition=None),
        "mr": _instance(6, 3, 2, Modality="MR", BodyPartExamined="HEAD", ViewPosition=None),
    }


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with orthanc.running(tmp_path_factory.mktemp("orthanc")) as server:
        files = hospital()
        for _, data in files.values():
            assert server.upload(data)["Status"] == "Success"
        yield server, files


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = support.embedded_with_tiny_model(
        tmp_path,
        patient_id_salt="site-salt",
        dicomweb_username=orthanc.USERNAME,
        dicomweb_password=orthanc.PASSWORD,
        dicomweb_page_size=2,  # six instances in three studies: every level pages
    )
    yield settings
    dispose_engines()


def test_a_pacs_scored_through_dicomweb(pacs, settings, tmp_path, caplog):
    from scheduler.report import write_report
    from scheduler.sources import walk
    from scheduler.submit import submit
    from scheduler.summary import get_job, job_summary

    server, files = pacs
    caplog.set_level(logging.DEBUG)
    job = submit(settings, server.dicomweb_source, "tiny@production")
    summary = job_summary(settings, job.job_id)
    assert (summary["total"], summary["scored"], summary["skipped"], summary["failed"]) == (6, 3, 3, 0)
    assert summary["skipped_by_reason"] == {
        "DICOM view not frontal: LL (scored: AP, PA or absent)": 1,
        "DICOM modality not scored: CT (scored: CR, DX)": 1,
        "DICOM modality not scored: MR (scored: CR, DX)": 1,
    }

    # Each scored film is found by its SOP instance hash, with the compressed ones decoded.
    report = write_report(settings, job.job_id, tmp_path / "report.html")
    csv_text = read_uri(report["csv"], settings).decode()
    rows = {row["sop_uid_hash"]: row for row in csv.DictReader(io.StringIO(csv_text)) if row["sop_uid_hash"]}
    for name in ("cr-pa", "dx-jpeg-lossless", "dx-jpeg2000"):
        row = rows[hash_identifier(files[name][0], settings)]
        assert row["outcome"] == "scored" and row["label"], name
        assert row["uri"].startswith(server.dicomweb_source + "/instances/")

    # Deterministic and idempotent: the same walk twice, and a second job re-runs nothing.
    source = get_job(settings, job.job_id).source
    assert source == server.dicomweb_source  # no filter, no credential in the job's source
    first = [item.uri for item in walk(source, settings)]
    assert first == [item.uri for item in walk(source, settings)] and len(set(first)) == 6
    again = job_summary(settings, submit(settings, server.dicomweb_source, "tiny@production").job_id)
    assert (again["scored"], again["skipped"], again["failed"]) == (0, 6, 0)

    database = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
    dump = "\n".join(database.iterdump())
    store = open_store(settings=settings)
    objects = [(info.key, store.get(info.key)) for info in store.list()]
    texts = [dump, caplog.text, csv_text, (tmp_path / "report.html").read_text(), *(k for k, _ in objects)]
    secrets = [IDENTIFIERS[tag] for tag in ("PatientName", "PatientID", "PatientBirthDate")]
    secrets += [uid for uid, _ in files.values()] + [f"{ROOT}.1", f"{ROOT}.2.1", "ACC-1-SECRET"]
    secrets += [orthanc.PASSWORD]
    for value in secrets:
        assert not any(value in text for text in texts), (
            value,
            [t[max(0, t.find(value) - 300) : t.find(value) + 50] for t in texts if value in t],
        )
        assert not any(value.encode() in data for _, data in objects), value


def test_wrong_credentials_are_refused_without_echoing_them(pacs, settings):
    from scheduler.submit import submit

    server, _ = pacs
    wrong = settings.model_copy(update={"dicomweb_password": SecretStr("WRONG-pass-c0ffee")})
    with pytest.raises(PermanentError, match="HTTP 401") as caught:
        submit(wrong, server.dicomweb_source, "tiny@production")
    assert "c0ffee" not in str(caught.value) and "WRONG" not in str(caught.value)


def test_credentials_in_the_source_are_refused(pacs, settings):
    from scheduler.submit import submit

    server, _ = pacs
    with pytest.raises(PermanentError, match="must not carry credentials"):
        submit(
            settings, server.dicomweb_source.replace("://", f"://u:{orthanc.PASSWORD}@"), "tiny@production"
        )
