"""The DICOM scoring policy: what a hospital archive holds besides frontal chest films (CT and MR
slices, laterals, screenshots, raw detector images) is skipped with its reason, never failed, and
the settings change what is scored."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.db.session import dispose_engines
from cxr.core.errors import ImageError
from cxr.core.imaging import decode_image
from cxr.core.imaging.dicom_policy import DicomPolicy, ImageSkipped, parse_codes
from cxr.core.outcomes import SkipReason
from cxr.core.settings import Settings
from tests.dicom_files import make_dicom

LIMITS = {"max_bytes": 50_000_000, "max_pixels": 40_000_000}
RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))

SKIPPED = [
    ({"Modality": "CT"}, SkipReason.DICOM_MODALITY, "CT (scored: CR, DX)"),
    ({"Modality": "MR"}, SkipReason.DICOM_MODALITY, "MR"),
    ({"Modality": None}, SkipReason.DICOM_MODALITY, "absent"),
    ({"Modality": "SR"}, SkipReason.DICOM_MODALITY, "SR"),
    ({"BodyPartExamined": "HEAD"}, SkipReason.DICOM_BODY_PART, "HEAD (scored: CHEST or absent)"),
    ({"ViewPosition": "LL"}, SkipReason.DICOM_VIEW, "LL (scored: AP, PA or absent)"),
    ({"ViewPosition": "LATERAL"}, SkipReason.DICOM_VIEW, "LATERAL"),
    ({"PresentationIntentType": "FOR PROCESSING"}, SkipReason.DICOM_FOR_PROCESSING, ""),
    ({"ImageType": ["DERIVED", "PRIMARY"]}, SkipReason.DICOM_DERIVED, "DERIVED\\PRIMARY"),
    ({"ImageType": ["ORIGINAL", "SECONDARY"]}, SkipReason.DICOM_DERIVED, "ORIGINAL\\SECONDARY"),
    ({"BurnedInAnnotation": "YES"}, SkipReason.DICOM_BURNED_IN, ""),
    ({"PhotometricInterpretation": "PALETTE COLOR"}, SkipReason.DICOM_PHOTOMETRIC, "PALETTE COLOR"),
]

SCORED = [
    {},
    {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "AP"},
    {"ViewPosition": None, "BodyPartExamined": None},  # many CR films fill neither
    {"ImageType": ["ORIGINAL", "PRIMARY"], "BurnedInAnnotation": "NO"},
    {"PresentationIntentType": "FOR PRESENTATION"},
]


@pytest.mark.parametrize(("overrides", "reason", "detail"), SKIPPED)
def test_outside_the_policy_is_skipped_with_its_reason(overrides, reason, detail):
    with pytest.raises(ImageSkipped) as caught:
        decode_image(make_dicom(RAMP, overrides=overrides), **LIMITS)
    assert caught.value.reason is reason
    assert str(caught.value) == (f"{reason.value}: {detail}" if detail else reason.value) or detail in str(
        caught.value
    )
    assert isinstance(caught.value, ImageError)  # callers that only know ImageError still stop


@pytest.mark.parametrize("overrides", SCORED)
def test_frontal_chest_films_are_decoded(overrides):
    decoded = decode_image(make_dicom(RAMP, overrides=overrides), **LIMITS)
    assert decoded.format == "DICOM" and decoded.pixels.shape == (64, 64)


def test_the_policy_is_checked_before_the_pixels():
    """A CT slice with no pixel data (or an SR) is skipped for what it is, not failed for its pixels."""
    with pytest.raises(ImageSkipped, match="modality not scored"):
        decode_image(make_dicom(RAMP, overrides={"Modality": "CT"}, with_pixels=False), **LIMITS)


def test_settings_change_what_is_scored(monkeypatch):
    monkeypatch.setenv("CXR_DICOM_MODALITIES", "cr, dx ,CT")
    monkeypatch.setenv("CXR_DICOM_VIEWS", "PA,AP,LL")
    monkeypatch.setenv("CXR_DICOM_SKIP_DERIVED", "false")
    monkeypatch.setenv("CXR_DICOM_SKIP_BURNED_IN", "false")
    monkeypatch.setenv("CXR_DICOM_SKIP_FOR_PROCESSING", "false")
    monkeypatch.setenv("CXR_DICOM_BODY_PARTS", "CHEST,THORAX")
    policy = DicomPolicy.from_settings(Settings())
    assert policy.modalities == {"CR", "DX", "CT"} and policy.body_parts == {"CHEST", "THORAX"}
    overrides = {
        "Modality": "CT",
        "ViewPosition": "LL",
        "BodyPartExamined": "THORAX",
        "ImageType": ["DERIVED", "SECONDARY"],
        "BurnedInAnnotation": "YES",
        "PresentationIntentType": "FOR PROCESSING",
    }
    decode_image(make_dicom(RAMP, overrides=overrides), dicom_policy=policy, **LIMITS)
    with pytest.raises(ImageSkipped):  # the default policy still refuses it
        decode_image(make_dicom(RAMP, overrides=overrides), **LIMITS)


def test_default_settings_give_the_default_policy():
    assert DicomPolicy.from_settings(Settings()) == DicomPolicy()
    assert parse_codes(" a,, b ") == {"A", "B"}


def test_a_reason_never_carries_more_than_a_short_printable_code():
    with pytest.raises(ImageSkipped) as caught:
        decode_image(make_dicom(RAMP, overrides={"BodyPartExamined": "HEADNECKANDMORE1"}), **LIMITS)
    assert "HEADNECKANDMORE1" in str(caught.value)
    with pytest.raises(ImageSkipped) as caught:
        DicomPolicy().check({"Modality": "X" * 64 + "\x07"})
    assert len(str(caught.value)) < 80 and "\x07" not in str(caught.value)


@pytest.fixture
def embedded(tmp_path) -> Settings:
    from tests import worker_support as support

    settings = support.embedded_with_tiny_model(tmp_path, patient_id_salt="test-salt")
    yield settings
    dispose_engines()


def test_a_hospital_folder_through_the_worker_skips_what_is_not_a_frontal_chest_film(embedded, tmp_path):
    """The real scoring path (walk → chunk → worker engine → SQL → summary and CSV): only the
    frontal chest films are scored; everything else is skipped with its reason and the failure
    count stays 0, so the failure-ratio alert cannot fire on a PA + lateral archive."""
    from scheduler.report import write_report
    from scheduler.submit import submit
    from scheduler.summary import job_summary

    archive = tmp_path / "hospital"
    archive.mkdir()
    films = {
        "pa.dcm": {},
        "ap.dcm": {"Modality": "DX", "ViewPosition": "AP", "BodyPartExamined": "CHEST"},
        "lateral.dcm": {"ViewPosition": "LL"},
        "ct.dcm": {"Modality": "CT", "BodyPartExamined": "CHEST", "ViewPosition": None},
        "mr.dcm": {"Modality": "MR", "BodyPartExamined": "HEAD"},
        "derived.dcm": {"ImageType": ["DERIVED", "SECONDARY"]},
        "raw.dcm": {"Modality": "DX", "PresentationIntentType": "FOR PROCESSING"},
    }
    for index, (name, overrides) in enumerate(films.items()):
        pixels = np.roll(RAMP, index, axis=1)  # different bytes: no duplicate skips
        (archive / name).write_bytes(make_dicom(pixels, overrides=overrides))

    job = submit(embedded, str(archive), "tiny@production")
    summary = job_summary(embedded, job.job_id)
    assert (summary["total"], summary["scored"], summary["skipped"], summary["failed"]) == (7, 2, 5, 0)
    reasons = summary["skipped_by_reason"]
    assert reasons == {
        "DICOM view not frontal: LL (scored: AP, PA or absent)": 1,
        "DICOM modality not scored: CT (scored: CR, DX)": 1,
        "DICOM modality not scored: MR (scored: CR, DX)": 1,
        "DICOM image derived or secondary: DERIVED\\SECONDARY": 1,
        "DICOM image for processing, not for presentation": 1,
    }
    report = write_report(embedded, job.job_id, tmp_path / "report.html")
    assert "DICOM view not frontal" in (tmp_path / "report.html").read_text()
    assert report["csv"]
