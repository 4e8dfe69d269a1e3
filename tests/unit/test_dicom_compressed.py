"""Compressed DICOM (the ``cxr[dicom]`` extra): each transfer syntax a PACS exports decodes to the
same pixels as the uncompressed file. The tests make their own files: pydicom encodes RLE,
JPEG-LS (pyjpegls) and JPEG 2000 (pylibjpeg-openjpeg); lossless JPEG comes from a small encoder
of our own (``tests/dicom_codecs.py``), baseline JPEG from Pillow.

Without the extra these tests skip, except under CI (``.ci/run`` installs it): there a missing
decoder is a failure."""

from __future__ import annotations

import io
import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from cxr.core.imaging import decode_image
from tests.dicom_codecs import compressed, encode_lossless_jpeg, with_codestream
from tests.dicom_files import make_dicom

LIMITS = {"max_bytes": 50_000_000, "max_pixels": 40_000_000}
TWELVE_BIT = {"BitsStored": 12, "HighBit": 11}


def _film(seed: int = 0, shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A 12-bit film-like image: a smooth body, sharp edges and noise (no codec's easy case)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    body = 2000 + 1500 * np.sin(x / 9.0) * np.cos(y / 13.0)
    body[20:40, 10:30] = 4000
    return np.clip(body + rng.normal(0, 60, shape), 0, 4095).astype(np.uint16)


def _need(uid: str, *, encode: bool) -> None:
    available = get_decoder(uid).is_available and (not encode or get_encoder(uid).is_available)
    if not available:
        if os.environ.get("CI"):
            pytest.fail(f"no {'encoder/' if encode else ''}decoder for {uid.name}: install cxr[dicom]")
        pytest.skip(f"no decoder for {uid.name} (pip install -e .[dicom])")


@pytest.mark.parametrize("uid", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_lossless_syntaxes_encoded_by_pydicom_decode_to_the_same_pixels(uid):
    _need(uid, encode=True)
    pixels = _film()
    plain = decode_image(make_dicom(pixels, overrides=TWELVE_BIT), **LIMITS)
    data = compressed(make_dicom(pixels, overrides=TWELVE_BIT), uid)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == uid
    decoded = decode_image(data, **LIMITS)
    np.testing.assert_array_equal(decoded.pixels, plain.pixels)
    assert decoded.bit_depth == 12


def test_lossless_jpeg_decodes_to_the_same_pixels():
    """JPEG Lossless SV1 (process 14), the commonest PACS export, through pylibjpeg-libjpeg."""
    _need(JPEGLosslessSV1, encode=False)
    pixels = _film(1)
    plain = decode_image(make_dicom(pixels, overrides=TWELVE_BIT), **LIMITS)
    codestream = encode_lossless_jpeg(pixels, precision=12)
    data = with_codestream(make_dicom(pixels, overrides=TWELVE_BIT), JPEGLosslessSV1, codestream)
    assert len(data) < pixels.nbytes  # really compressed
    np.testing.assert_array_equal(decode_image(data, **LIMITS).pixels, plain.pixels)


def test_baseline_jpeg_decodes_close_to_the_original():
    _need(JPEGBaseline8Bit, encode=False)
    pixels = (_film(2) >> 4).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    data = with_codestream(make_dicom(pixels, bits_allocated=8), JPEGBaseline8Bit, buffer.getvalue())
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32)
    decoded = decode_image(data, **LIMITS).pixels
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.abs(decoded - expected).max() <= 2 / 255
