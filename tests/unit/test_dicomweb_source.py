"""The DICOMweb source without a server: what a source may say, sealed instance URIs, and the
multipart answers of WADO-RS (the PACS itself: tests/integration/test_dicomweb_orthanc.py)."""

from __future__ import annotations

import pytest

from cxr.core.dicomweb import multipart_parts, parse_source, split_instance_uri
from cxr.core.errors import ImageError, PermanentError
from cxr.core.privacy import seal, unseal
from cxr.core.settings import Settings
from scheduler.sources import normalise_source


def test_a_source_is_normalised_with_its_filters_sorted():
    source = parse_source("dicomwebs://PACS.example:8443/dicom-web/?StudyDate=20200101-20201231&Modality=DX")
    assert source.base_url == "https://pacs.example:8443/dicom-web"
    assert source.uri == "dicomwebs://pacs.example:8443/dicom-web?Modality=DX&StudyDate=20200101-20201231"
    assert source.study_filters() == {"ModalitiesInStudy": "DX", "StudyDate": "20200101-20201231"}
    assert source.series_filters() == {"Modality": "DX"}
    assert parse_source("dicomweb://h:80/p").base_url == "http://h:80/p"
    assert normalise_source("dicomweb://h:80/p?b=2&a=1") == "dicomweb://h:80/p?a=1&b=2"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("dicomweb://user:secret@h/p", "must not carry credentials"),
        ("dicomweb:///p", "no host"),
        ("dicomweb://h:99999/p", "invalid port"),
        ("dicomweb://h/p?PatientID=MRN-1", "PatientID would store a patient's identity"),
        ("dicomweb://h/p?patientname=DOE", "patient's identity"),
    ],
)
def test_a_source_that_would_leak_or_cannot_work_is_refused(uri, message):
    with pytest.raises(PermanentError, match=message) as caught:
        normalise_source(uri)
    assert "secret" not in str(caught.value) and "MRN-1" not in str(caught.value)


def test_instance_uids_are_sealed_deterministically_and_only_the_salt_opens_them(tmp_path):
    site = Settings(data_dir=tmp_path, patient_id_salt="site-salt")
    other = Settings(data_dir=tmp_path, patient_id_salt="another-salt")
    text = "1.2.3/1.2.3.4/1.2.3.4.5"
    token = seal(text, site)
    assert token == seal(text, site) and "1.2.3" not in token  # the same walk cuts the same chunks
    assert unseal(token, site) == text
    with pytest.raises(ValueError, match="another salt"):
        unseal(token, other)
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(ValueError):
        unseal(tampered, site)
    source, got = split_instance_uri(parse_source("dicomweb://h:1/p").instance_uri(token))
    assert got == token and source.base_url == "http://h:1/p"
    with pytest.raises(ImageError):
        split_instance_uri("dicomweb://h:1/p/studies/1.2.3")


def test_multipart_answers_are_split_into_their_bodies():
    body = (
        b"preamble\r\n--b0\r\nContent-Type: application/dicom\r\n\r\n\x00DICM\r\n\xff\r\n"
        b"--b0\r\nContent-Type: application/dicom\r\n\r\nsecond\r\n--b0--\r\n"
    )
    assert multipart_parts('multipart/related; type="application/dicom"; boundary="b0"', body) == [
        b"\x00DICM\r\n\xff",
        b"second",
    ]
    with pytest.raises(ImageError, match="multipart"):
        multipart_parts("application/json", b"{}")
