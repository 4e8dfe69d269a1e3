"""DICOM files built with pydicom for tests: every attribute the decoder cares about is explicit."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

IDENTIFIERS = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-0042-SECRET",
    "PatientBirthDate": "19610203",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1111",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.2222",
}


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    view: str | None = "PA",
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    rescale: tuple[float, float] = (1.0, 0.0),
    with_pixels: bool = True,
) -> bytes:
    """An uncompressed 16-bit DICOM CR image carrying identifying tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = IDENTIFIERS["SOPInstanceUID"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    for tag, value in IDENTIFIERS.items():
        setattr(ds, tag, value)
    ds.Modality = "CR"
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.LUTData = np.asarray(voi_lut, dtype=np.uint16).tobytes()
        ds.VOILUTSequence = Sequence([item])
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
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
    ds.VOILUTSequence = Sequence([item])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
