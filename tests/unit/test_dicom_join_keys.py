"""Join keys: the study, series and instance UIDs and the accession number reach SQL (``images``)
and the CSV only as salted hashes, so a site holding the salt can join results to its RIS/PACS
records and nobody else can read them."""

from __future__ import annotations

import csv
import io
import sqlite3

import numpy as np
import pytest

from cxr.core.db.session import dispose_engines
from cxr.core.privacy import JOIN_KEY_COLUMNS, hash_identifier
from cxr.core.settings import Settings
from cxr.core.storage import read_uri
from tests import worker_support as support
from tests.dicom_files import IDENTIFIERS, make_dicom

RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))
KEYS = {
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.31337",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.31338",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.31339",
    "AccessionNumber": "ACC-77-SECRET",
}


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = support.embedded_with_tiny_model(tmp_path, patient_id_salt="site-salt")
    yield settings
    dispose_engines()


def test_join_keys_are_salted_hashes_in_sql_and_csv(settings, tmp_path):
    from scheduler.report import write_report
    from scheduler.submit import submit

    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "film.dcm").write_bytes(make_dicom(RAMP, overrides=KEYS))
    (archive / "lateral.dcm").write_bytes(make_dicom(RAMP, view="LL"))
    (archive / "plain.png").write_bytes(support.synthetic_png(1, (64, 64)))

    job = submit(settings, str(archive), "tiny@production")
    report = write_report(settings, job.job_id, tmp_path / "report.html")
    rows = {
        row["uri"].rsplit("/", 1)[-1]: row
        for row in csv.DictReader(io.StringIO(read_uri(report["csv"], settings).decode()))
    }

    expected = {
        "study_uid_hash": hash_identifier(KEYS["StudyInstanceUID"], settings),
        "series_uid_hash": hash_identifier(KEYS["SeriesInstanceUID"], settings),
        "sop_uid_hash": hash_identifier(KEYS["SOPInstanceUID"], settings),
        "accession_hash": hash_identifier(KEYS["AccessionNumber"], settings),
    }
    assert tuple(expected) == JOIN_KEY_COLUMNS
    assert {column: rows["film.dcm"][column] for column in JOIN_KEY_COLUMNS} == expected
    assert all(rows["plain.png"][column] == "" for column in JOIN_KEY_COLUMNS)  # not DICOM
    assert rows["lateral.dcm"]["outcome"] == "skipped"

    database = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
    columns = ", ".join(expected)
    stored = database.execute(f"SELECT {columns} FROM images WHERE format = 'DICOM'").fetchall()
    assert stored == [tuple(expected.values())]
    # A site holding the salt finds its study; the values themselves are nowhere.
    found = database.execute(
        "SELECT count(*) FROM images WHERE study_uid_hash = ?",
        (hash_identifier(KEYS["StudyInstanceUID"], settings),),
    ).fetchone()
    assert found == (1,)
    dump = "\n".join(database.iterdump())
    csv_text = read_uri(report["csv"], settings).decode()
    for value in [*KEYS.values(), IDENTIFIERS["PatientID"], IDENTIFIERS["PatientName"]]:
        assert value not in dump and value not in csv_text, value
    # Another salt gives other keys: the hash is useless without the site's secret.
    other = Settings(data_dir=tmp_path / "other", patient_id_salt="another-salt")
    assert hash_identifier(KEYS["StudyInstanceUID"], other) != expected["study_uid_hash"]
