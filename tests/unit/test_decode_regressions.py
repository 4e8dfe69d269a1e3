"""Every distinct crash the decoder fuzzer found, as a small input built in code.

Before the fix each of these escaped ``decode_image`` as a third-party exception (or returned
pixels outside the contract, or took seconds and hundreds of MiB); now each is an ``ImageError``
whose reason names the stage, with the original exception chained as its cause.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pydicom.errors import BytesLengthException

from cxr.core.errors import ImageError
from cxr.core.imaging import InputContract, decode_image, preprocess
from tests.dicom_files import make_dicom, with_transfer_syntax
from tests.fuzz_corpus import LIMITS, check

RAMP = np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (32, 1))  # 32×32, values 0..3968


def refused(data: bytes, reason: str) -> ImageError:
    """The ImageError ``data`` raises, checked against ``reason`` and within the fuzz bounds."""
    with pytest.raises(ImageError, match=reason) as caught:
        decode_image(data, **LIMITS)
    assert check(data).kind == "refused"
    return caught.value


def test_voi_lut_data_shorter_than_its_descriptor():
    """The issue's case: LUTDescriptor says 8 entries, LUTData holds 4 (struct.error)."""
    data = make_dicom(RAMP, voi_lut=np.arange(4), voi_descriptor=[8, 0, 16])
    error = refused(data, r"^corrupt DICOM VOI LUT: error: unpack")
    assert isinstance(error.__cause__, struct.error)


def test_voi_lut_entries_of_256_bits():
    """A LUTDescriptor whose bits-per-entry pydicom does not support (NotImplementedError)."""
    data = make_dicom(RAMP, voi_lut=np.arange(4), voi_descriptor=[4, 0, 256])
    error = refused(data, r"^corrupt DICOM VOI LUT: NotImplementedError")
    assert isinstance(error.__cause__, NotImplementedError)


def test_voi_lut_values_over_its_declared_8_bits():
    """LUTDescriptor declares 8-bit entries, LUTData holds 300 and more (OverflowError)."""
    data = make_dicom(RAMP, voi_lut=np.array([0, 300, 600, 900]), voi_descriptor=[4, 0, 8])
    error = refused(data, r"^corrupt DICOM VOI LUT: OverflowError")
    assert isinstance(error.__cause__, OverflowError)


def test_modality_lut_of_one_entry():
    """A one-entry Modality LUT reads as a scalar, which pydicom then indexes (IndexError)."""
    error = refused(make_dicom(RAMP, modality_lut=np.array([7])), r"^corrupt DICOM modality LUT: IndexError")
    assert isinstance(error.__cause__, IndexError)


def test_deflated_transfer_syntax_over_a_plain_dataset():
    """The file meta says deflated; the dataset is not (zlib.error while reading)."""
    data = with_transfer_syntax(make_dicom(RAMP), "1.2.840.10008.1.2.1.99")
    error = refused(data, r"^unreadable DICOM: error: Error -3 while decompressing")
    assert isinstance(error.__cause__, zlib.error)


def test_file_meta_truncated_inside_an_element():
    """The file ends 4 bytes into the second file-meta element (struct.error)."""
    error = refused(make_dicom(RAMP)[:152], r"^unreadable DICOM: error: unpack requires")
    assert isinstance(error.__cause__, struct.error)


def test_file_meta_truncated_inside_the_group_length():
    """The file ends one byte into the (0002,0000) UL value (pydicom's BytesLengthException)."""
    error = refused(make_dicom(RAMP)[:141], r"^unreadable DICOM: BytesLengthException")
    assert isinstance(error.__cause__, BytesLengthException)


def test_file_meta_element_with_an_unknown_vr():
    """The transfer syntax element's VR bytes are garbage: pydicom raises NotImplementedError
    while reading the file meta."""
    data = bytearray(make_dicom(RAMP))
    start = data.index(b"\x02\x00\x10\x00UI")
    data[start + 4 : start + 6] = b"\x55\xc9"
    error = refused(bytes(data), r"^unreadable DICOM: NotImplementedError: Unknown Value Representation")
    assert isinstance(error.__cause__, NotImplementedError)


def test_basic_offset_table_shorter_than_its_item_length():
    """Encapsulated pixel data whose offset-table item claims 8 bytes and holds 2 (struct.error)."""
    table = b"\xfe\xff\x00\xe0" + struct.pack("<I", 8) + b"\x00\x00"
    data = make_dicom(RAMP, transfer_syntax="1.2.840.10008.1.2.5", overrides={"PixelData": table})
    error = refused(data, r"^corrupt DICOM pixel data: error: unpack requires")
    assert isinstance(error.__cause__, struct.error)


def _tiff_with_second_ifd_without_dimensions() -> bytes:
    """An 8×8 TIFF whose next-IFD pointer leads to an IFD with no width or height."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 100).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd)
    next_pointer = ifd + 2 + 12 * entries
    data[next_pointer : next_pointer + 4] = struct.pack("<I", len(data))
    return bytes(data) + struct.pack("<HHHII", 1, 262, 3, 1, 1) + b"\0\0\0\0"  # Photometric only


def test_tiff_frame_without_dimensions():
    """Counting a TIFF's frames parses every IFD; Pillow raises TypeError("Missing dimensions")."""
    data = _tiff_with_second_ifd_without_dimensions()
    assert len(data) < 400
    error = refused(data, r"^corrupt TIFF frame headers: TypeError: Missing dimensions")
    assert isinstance(error.__cause__, TypeError)


def test_tiny_jpeg_claiming_sixty_million_pixels():
    """A 1 KB JPEG whose frame header claims 7745×7745, just under the pixel limit: it decoded
    to 60 million gray pixels in about 2 s and 300 MiB. Now refused by header."""
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 100).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 7745, 7745)
    refused(bytes(data), r"pixels from a \d+-byte file, over 1024 pixels per byte")


def test_dicom_claiming_more_pixels_than_its_data_holds():
    """Rows × Columns say 60 000 × 1 000 (120 MB at 16 bits) over 2 KB of pixel data: refused
    from the header, before pydicom allocates anything."""
    data = make_dicom(RAMP, overrides={"Rows": 60_000, "Columns": 1_000})
    error = refused(data, r"^DICOM header claims 60000×1000×1×1 values at 16 bits = 120000000 bytes")
    assert error.__cause__ is None
    assert check(data).peak_bytes < 8 * 2**20


def test_dicom_rescaled_past_float_range():
    """RescaleSlope 1e308 makes every value infinite; it used to become a black image."""
    refused(make_dicom(RAMP, rescale=(1e308, 0.0)), r"^DICOM rescale slope/intercept give non-finite values")


def test_float_tiff_spanning_float32_range_stays_in_unit_range():
    """Values from -3e38 to 3e38: ``array - low`` overflowed float32 to infinity."""
    values = np.linspace(-3e38, 3e38, 32 * 32, dtype=np.float32).reshape(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    pixels = decode_image(buffer.getvalue(), **LIMITS).pixels
    assert np.isfinite(pixels).all() and pixels.min() == 0.0 and pixels.max() == 1.0
    assert check(buffer.getvalue()).kind == "pixels"


def test_float_tiff_with_nan_is_refused():
    values = np.ones((32, 32), dtype=np.float32)
    values[3, 4] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    refused(buffer.getvalue(), r"^image holds non-finite pixel values")


def test_preprocess_refuses_nan_pixels():
    """NaN compares False with every bound, so a range check of ``low < 0 or high > 1`` let it in."""
    pixels = np.full((32, 32), np.nan, dtype=np.float32)
    with pytest.raises(ImageError, match=r"values in \[0, 1\], got \[nan, nan\]"):
        preprocess(pixels, InputContract(height=16, width=16))
