"""``cxr jobs export-dicom``: an SR per scored DICOM film of a folder job, and its Grad-CAM overlay
as a Secondary Capture, kept in object storage without the patient's identity (the PACS round
trip: tests/integration/test_dicomweb_orthanc.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest

from cxr.core.db.session import dispose_engines
from cxr.core.storage import open_store
from tests import worker_support as support
from tests.dicom_files import IDENTIFIERS, make_dicom
from tests.unit.test_cli_models import run_cxr

RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))


@pytest.fixture
def settings(tmp_path):
    settings = support.embedded_with_tiny_model(tmp_path)
    yield settings
    dispose_engines()


@pytest.mark.slow  # the CLI in a subprocess
def test_export_writes_an_sr_per_scored_dicom_film(settings, tmp_path):
    from scheduler.submit import submit

    archive = tmp_path / "archive"
    archive.mkdir()
    series = {"SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.3333", "AccessionNumber": "ACC-9-SECRET"}
    (archive / "pa.dcm").write_bytes(make_dicom(RAMP, overrides=series))
    (archive / "no-series.dcm").write_bytes(make_dicom(np.roll(RAMP, 3, axis=1)))  # an SR cannot reference it
    (archive / "lateral.dcm").write_bytes(make_dicom(RAMP.T.copy(), view="LL"))
    (archive / "plain.png").write_bytes(support.synthetic_png(5, (64, 64)))
    job = submit(settings, str(archive), "tiny@production", explain="all")
    dispose_engines()

    out = json.loads(run_cxr("jobs", "export-dicom", job.job_id, "--json", data_dir=settings.data_dir).stdout)
    assert (out["written"], out["sent"], out["not_dicom"], out["unusable"]) == (1, 0, 1, 1)
    (key,) = out["keys"]
    data = open_store(settings=settings).get(key)
    sr = pydicom.dcmread(io.BytesIO(data))
    assert sr.Modality == "SR" and sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.StudyInstanceUID == IDENTIFIERS["StudyInstanceUID"]  # filed in the source's study
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == series["SeriesInstanceUID"] != sr.SeriesInstanceUID  # a new series
    texts = [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]
    assert any("not for diagnostic use" in text for text in texts)
    for value in ("Doe^Jane", IDENTIFIERS["PatientID"], IDENTIFIERS["PatientBirthDate"], "ACC-9-SECRET"):
        assert value.encode() not in data, value

    (overlay_key,) = out["overlay_keys"]
    overlay = open_store(settings=settings).get(overlay_key)
    sc = pydicom.dcmread(io.BytesIO(overlay))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
    assert sc.StudyInstanceUID == sr.StudyInstanceUID and sc.SeriesInstanceUID not in (
        sr.SeriesInstanceUID,
        series["SeriesInstanceUID"],
    )
    assert "not for diagnostic use" in sc.SeriesDescription and sc.pixel_array.shape[-1] == 3
    for value in ("Doe^Jane", IDENTIFIERS["PatientID"], IDENTIFIERS["PatientBirthDate"], "ACC-9-SECRET"):
        assert value.encode() not in overlay, value

    refused = run_cxr(
        "jobs", "export-dicom", job.job_id, "--write-back", data_dir=settings.data_dir, check=False
    )
    assert refused.returncode != 0 and "dicomweb://" in refused.stderr + refused.stdout


def test_the_sr_holds_the_operating_point_decisions_and_the_shift_flag():
    from scheduler.dicom_export import build_sr
    from scheduler.summary import ImageRow

    source = pydicom.dcmread(io.BytesIO(make_dicom(RAMP, overrides={"SeriesInstanceUID": "1.2.3.4"})))
    row = ImageRow(
        uri="file:///a.dcm", sha256="0" * 64, outcome="scored", label="covid", confidence=0.7,
        probabilities={"covid": 0.7, "normal": 0.2, "pneumonia": 0.1}, failure_stage=None,
        failure_reason=None, skip_reason=None, shift_percentile=99.5, out_of_distribution=True,
    )  # fmt: skip
    model = {"name": "m", "version": 3, "sha256": "a" * 64, "classes": ["covid", "normal", "pneumonia"],
             "operating_points": {"covid": 0.65, "pneumonia": 0.3}}  # fmt: skip
    sr = build_sr(source, row, model, "1.2.3.9", "1.2.3.9.1")
    values = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in sr.ContentSequence}
    assert values["covid at the operating point 0.6500"].TextValue == "positive"
    assert values["pneumonia at the operating point 0.3000"].TextValue == "negative"
    assert values["Unlike the training data"].TextValue == "yes"
    assert float(values["Probability of normal"].MeasuredValueSequence[0].NumericValue) == pytest.approx(0.2)
    assert values["Algorithm Version"].TextValue == "3" and values["Model file SHA-256"].TextValue == "a" * 64
    assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
