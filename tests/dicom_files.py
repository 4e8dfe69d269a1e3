"""DICOM files built with pydicom for tests: every attribute the decoder cares about is explicit."""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)

IDENTIFIERS = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-0042-SECRET",
    "PatientBirthDate": "19610203",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1111",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.2222",
}

_DTYPES = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16, (32, 0): np.uint32}


def _lut_item(lut: np.ndarray, descriptor: Sequence[int] | None) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = list(descriptor) if descriptor is not None else [len(lut), 0, 16]
    item.LUTData = np.asarray(lut, dtype=np.uint16).tobytes()
    return item


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    view: str | None = "PA",
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    voi_descriptor: Sequence[int] | None = None,
    modality_lut: np.ndarray | None = None,
    rescale: tuple[float, float] = (1.0, 0.0),
    bits_allocated: int = 16,
    pixel_representation: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    overrides: Mapping[str, object] | None = None,
    with_pixels: bool = True,
) -> bytes:
    """An uncompressed DICOM CR image (16-bit unsigned by default) carrying identifying tags.

    ``pixels`` is (rows, cols), (frames, rows, cols) for a multi-frame image or (rows, cols, 3)
    for RGB. ``voi_descriptor`` replaces the VOI LUT's descriptor (one that disagrees with its
    data is a corrupt file); a compressed ``transfer_syntax`` encapsulates the raw pixel bytes
    as if they were its codestream (garbage to the codec); ``overrides`` set (or, with None,
    delete) any top-level attribute last, so a test can make a header lie about its pixels.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = IDENTIFIERS["SOPInstanceUID"]
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID  # fixed: same pixels, same bytes
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    for tag, value in IDENTIFIERS.items():
        setattr(ds, tag, value)
    ds.Modality = "CR"
    if view is not None:
        ds.ViewPosition = view
    rgb = pixels.ndim == 3 and pixels.shape[-1] == 3
    if pixels.ndim == 3 and not rgb:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[:2] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "RGB" if rgb else photometric
    ds.BitsAllocated, ds.BitsStored = bits_allocated, bits_allocated
    ds.HighBit, ds.PixelRepresentation = bits_allocated - 1, pixel_representation
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        ds.VOILUTSequence = DicomSequence([_lut_item(voi_lut, voi_descriptor)])
    if modality_lut is not None:
        item = _lut_item(modality_lut, None)
        item.ModalityLUTType = "US"
        ds.ModalityLUTSequence = DicomSequence([item])
    if with_pixels:
        raw = np.ascontiguousarray(pixels, dtype=_DTYPES[bits_allocated, pixel_representation]).tobytes()
        compressed = UID(transfer_syntax).is_compressed
        ds.PixelData = encapsulate([raw]) if compressed else raw
    for tag, value in (overrides or {}).items():
        if value is None:
            if tag in ds:
                delattr(ds, tag)
        else:
            setattr(ds, tag, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def malformed_voi_lut_dicom(pixels: np.ndarray) -> bytes:
    """A DICOM whose VOI LUT descriptor promises 4096 entries while its LUTData holds 16: pydicom
    raises ``struct.error`` reading it, an exception no image library documents."""
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.arange(16, dtype=np.uint16) * 100).tobytes()
    ds = pydicom.dcmread(io.BytesIO(make_dicom(pixels)))
    ds.VOILUTSequence = DicomSequence([item])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """``data`` (written by ``make_dicom``) with only its file meta's transfer syntax UID swapped:
    the dataset keeps its explicit-VR little-endian encoding and native pixels, so the header
    now lies about both. The group length is fixed up so the file meta itself stays valid."""
    start = data.index(b"\x02\x00\x10\x00UI")
    old_length = struct.unpack_from("<H", data, start + 6)[0]
    value = uid.encode("ascii")
    value += b"\x00" * (len(value) % 2)
    patched = data[:start] + b"\x02\x00\x10\x00UI" + struct.pack("<H", len(value)) + value
    patched += data[start + 8 + old_length :]
    group = patched.index(b"\x02\x00\x00\x00UL\x04\x00") + 8
    meta_length = struct.unpack_from("<I", patched, group)[0] + len(value) - old_length
    return patched[:group] + struct.pack("<I", meta_length) + patched[group + 4 :]
