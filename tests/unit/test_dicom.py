"""DICOM decoding: LUT order, MONOCHROME1, views, compression, and no identifiers in clear."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.errors import ImageError
from cxr.core.imaging import decode_image
from cxr.core.imaging.dicom_policy import DicomPolicy, ImageSkipped
from tests.dicom_files import IDENTIFIERS, make_dicom

LIMITS = {"max_bytes": 50_000_000, "max_pixels": 40_000_000}
RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))  # 64×64, values 0..4032


def test_monochrome2_ramp_maps_to_unit_range():
    decoded = decode_image(make_dicom(RAMP), **LIMITS)
    assert decoded.format == "DICOM" and decoded.pixels.shape == (64, 64)
    np.testing.assert_allclose(decoded.pixels[0], np.linspace(0, 1, 64), atol=1e-6)


def test_monochrome1_is_inverted():
    decoded = decode_image(make_dicom(RAMP, photometric="MONOCHROME1"), **LIMITS)
    np.testing.assert_allclose(decoded.pixels[0], np.linspace(1, 0, 64), atol=1e-6)


def test_window_center_width_clips_outside_values():
    decoded = decode_image(make_dicom(RAMP, window=(2048, 1024)), **LIMITS)
    row = decoded.pixels[0]
    assert row[RAMP[0] < 1536].max() == 0.0  # below the window: black
    assert row[RAMP[0] > 2560].min() == 1.0  # above the window: white
    inside = row[(RAMP[0] > 1600) & (RAMP[0] < 2500)]
    assert np.all(np.diff(inside) > 0)  # a ramp inside the window


def test_voi_lut_sequence_is_applied():
    lut = np.where(np.arange(4096) < 2048, 0, 65535)  # a step: threshold at 2048
    decoded = decode_image(make_dicom(RAMP, voi_lut=lut), **LIMITS)
    np.testing.assert_array_equal(decoded.pixels[0], (RAMP[0] >= 2048).astype(np.float32))


def test_bogus_voi_lut_falls_back_to_the_full_range():
    decoded = decode_image(make_dicom(RAMP, voi_lut=np.zeros(4096)), **LIMITS)
    np.testing.assert_allclose(decoded.pixels[0], np.linspace(0, 1, 64), atol=1e-6)


def test_rescale_slope_does_not_change_the_normalised_image():
    plain = decode_image(make_dicom(RAMP), **LIMITS).pixels
    rescaled = decode_image(make_dicom(RAMP, rescale=(2.0, -1024.0)), **LIMITS).pixels
    np.testing.assert_allclose(plain, rescaled, atol=1e-6)


def test_lateral_view_is_skipped_with_a_reason():
    with pytest.raises(ImageSkipped, match="view not frontal: LL"):
        decode_image(make_dicom(RAMP, view="LL"), **LIMITS)


def test_no_pixel_data_is_a_clear_failure():
    with pytest.raises(ImageError, match="no pixel data"):
        decode_image(make_dicom(RAMP, with_pixels=False), **LIMITS)


def test_compressed_decodes_or_names_what_to_install():
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    if path is None:
        pytest.skip("pydicom's bundled JPEG-LS test file is not available")
    with open(path, "rb") as stream:
        data = stream.read()
    mr = DicomPolicy(modalities=frozenset({"MR"}), skip_derived=False)  # pydicom's MR test file
    if get_decoder(JPEGLSLossless).is_available:  # the cxr[dicom] extra is installed
        decoded = decode_image(data, max_bytes=50_000_000, max_pixels=40_000_000, dicom_policy=mr)
        assert decoded.pixels.shape == (64, 64)
        return
    with pytest.raises(ImageError, match=r"JPEG-LS.*pylibjpeg"):
        decode_image(data, max_bytes=50_000_000, max_pixels=40_000_000, dicom_policy=mr)


def test_identifiers_leave_only_as_salted_hashes():
    def hasher(value: str) -> str:
        return "h:" + str(len(value))

    decoded = decode_image(make_dicom(RAMP), hasher=hasher, **LIMITS)
    text = repr(decoded.metadata)
    for value in IDENTIFIERS.values():
        assert value not in text
    assert decoded.metadata["patient_id_hash"] == hasher(IDENTIFIERS["PatientID"])
    assert set(decoded.metadata) == {"view", "modality", "patient_id_hash", "study_uid_hash", "sop_uid_hash"}
    unhashed = decode_image(make_dicom(RAMP), **LIMITS).metadata
    assert set(unhashed) == {"view", "modality"}
