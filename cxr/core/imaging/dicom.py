"""DICOM → the decoder's pixel contract, through pydicom.

Order matters and follows the standard: stored values → modality LUT (rescale slope/intercept)
→ VOI LUT or window centre/width → MONOCHROME1 inverted → [0, 1]. Identifying values (patient id,
study/SOP instance UIDs) leave this module only as salted hashes, through the ``hasher`` the
caller passes; names, birth dates and every other tag are never read out at all.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from cxr.core.errors import ImageError
from cxr.core.imaging.decode import DecodedImage, _check_pixels, _min_max

FRONTAL_VIEWS = frozenset({"PA", "AP"})


class ImageSkipped(ImageError):
    """A readable image this system deliberately does not score (e.g. a lateral view)."""


def decode_dicom(
    data: bytes,
    *,
    max_pixels: int,
    hasher: Callable[[str], str] | None = None,
    allowed_views: frozenset[str] | None = FRONTAL_VIEWS,
) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise ImageError(f"unreadable DICOM: {exc}") from exc
    if "PixelData" not in ds:
        raise ImageError("DICOM file has no pixel data")
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if allowed_views is not None and view and view not in allowed_views:
        raise ImageSkipped(f"DICOM view position {view!r} is not frontal ({'/'.join(sorted(allowed_views))})")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_pixels(cols, rows, max_pixels)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"DICOM holds {frames} frames; expected a single radiograph")

    try:
        stored = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise ImageError(
            f"cannot decompress DICOM transfer syntax {name}: install the pylibjpeg plugins "
            "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"
        ) from exc
    except (ValueError, AttributeError, KeyError) as exc:
        raise ImageError(f"corrupt DICOM pixel data: {exc}") from exc

    if stored.ndim == 3 and stored.shape[-1] == 3:  # colour secondary capture: no LUTs apply
        windowed = stored.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif stored.ndim == 2:
        windowed = _apply_luts(stored, ds)
    else:
        raise ImageError(f"DICOM pixel array has shape {stored.shape}; expected one gray frame")
    pixels = _min_max(windowed)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = 1.0 - pixels
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    return DecodedImage(
        pixels=pixels.astype(np.float32),
        format="DICOM",
        bit_depth=bits,
        metadata=_safe_metadata(ds, view, hasher),
    )


def _apply_luts(stored: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT (rescale) then VOI LUT or window; a bogus VOI falls back to the full range."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(stored, ds))
    if values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0):
        values = values.astype(np.int64)  # a VOI LUT is indexed by integer values
    try:
        windowed = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
    except (ValueError, IndexError, TypeError, KeyError, AttributeError):
        return values.astype(np.float64)
    if not np.isfinite(windowed).all() or windowed.max() <= windowed.min():
        return values.astype(np.float64)
    return windowed


def _safe_metadata(ds: Any, view: str, hasher: Callable[[str], str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"view": view or "unknown", "modality": str(ds.get("Modality", "") or "")}
    if hasher is not None:
        for tag, key in (
            ("PatientID", "patient_id_hash"),
            ("StudyInstanceUID", "study_uid_hash"),
            ("SOPInstanceUID", "sop_uid_hash"),
        ):
            value = str(ds.get(tag, "") or "").strip()
            if value:
                meta[key] = hasher(value)
    return meta
