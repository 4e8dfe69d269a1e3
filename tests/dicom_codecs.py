"""Compressed DICOM files for tests: pydicom's encoders (``compressed``), a codestream from
elsewhere wrapped into a file (``with_codestream``), and a minimal lossless JPEG encoder (ITU T.81
process 14, first-order prediction: DICOM's JPEG Lossless SV1, 1.2.840.10008.1.2.4.70).

pydicom 3 can decode this transfer syntax (through pylibjpeg-libjpeg) but has no encoder for it,
and it is what many PACS exports use, so the tests make their own codestreams: one gray
component, predictor 1 (the pixel to the left), no point transform, one fixed Huffman table.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
from pydicom.encaps import encapsulate

#: SSSS (difference categories 0..16), each coded in 5 bits: codes 00000..10000, none all ones.
_CODE_LENGTH = 5


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


class _Bits:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0

    def put(self, value: int, length: int) -> None:
        for shift in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> shift) & 1)
            self.count += 1
            if self.count == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0x00)  # byte stuffing
                self.acc = self.count = 0

    def flush(self) -> bytes:
        if self.count:
            self.put((1 << (8 - self.count)) - 1, 8 - self.count)  # pad with ones
        return bytes(self.out)


def encode_lossless_jpeg(pixels: np.ndarray, precision: int) -> bytes:
    """``pixels`` (rows, cols), unsigned, below ``2**precision`` → a lossless JPEG codestream."""
    rows, cols = pixels.shape
    values = pixels.astype(np.int64)
    if values.min() < 0 or values.max() >= 1 << precision:
        raise ValueError("pixel values outside the precision")
    # Predictions (T.81 H.1.2.1): the first pixel from 2**(P-1), the first row from the left,
    # the first column from above, everything else from the left (predictor 1).
    predicted = np.empty_like(values)
    predicted[:, 1:] = values[:, :-1]
    predicted[1:, 0] = values[:-1, 0]
    predicted[0, 0] = 1 << (precision - 1)
    differences = ((values - predicted + 32768) % 65536) - 32768  # modulo 2**16, signed

    bits = _Bits()
    for diff in differences.ravel().tolist():
        magnitude = abs(diff)
        category = magnitude.bit_length() if diff != -32768 else 16
        bits.put(category, _CODE_LENGTH)
        if 0 < category < 16:
            bits.put(diff if diff > 0 else diff + (1 << category) - 1, category)

    huffman_counts = [0] * 16
    huffman_counts[_CODE_LENGTH - 1] = 17
    dht = bytes([0x00, *huffman_counts, *range(17)])  # class 0 (DC/lossless), table 0
    sof3 = struct.pack(">BHHB", precision, rows, cols, 1) + bytes([1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, predictor 1, Se 0, Pt 0
    return (
        b"\xff\xd8"
        + _segment(0xFFC4, dht)
        + _segment(0xFFC3, sof3)
        + _segment(0xFFDA, sos)
        + bits.flush()
        + b"\xff\xd9"
    )


def _saved(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def compressed(data: bytes, uid: str) -> bytes:
    """The DICOM file ``data`` recompressed by pydicom's encoder for ``uid`` (same instance UID)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.compress(uid, generate_instance_uid=False)
    return _saved(ds)


def with_codestream(data: bytes, uid: str, codestream: bytes) -> bytes:
    """The DICOM file ``data`` with its pixel data replaced by one encapsulated ``codestream``."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    return _saved(ds)
