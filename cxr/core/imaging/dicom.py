"""DICOM → the decoder's pixel contract, through pydicom.

Order matters and follows the standard: stored values → modality LUT (rescale slope/intercept)
→ VOI LUT or window centre/width → MONOCHROME1 inverted → [0, 1]. Identifying values (patient id,
study/SOP instance UIDs) leave this module only as salted hashes, through the ``hasher`` the
caller passes; names, birth dates and every other tag are never read out at all.

Given a ``target_side`` (the decode-scale rule of ``decode``), the stored integers are first
reduced by an area mean of k×k blocks, so that the LUTs and every float array work on the small
film, never on a full-size one.

A file from an archive can lie anywhere, so every stage turns pydicom's exceptions into an
``ImageError`` naming the stage (read, header, pixel data, modality LUT, VOI LUT, window), and the
header is checked against the limit and against the pixel data it describes *before* pydicom
allocates the pixel array.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.errors import BytesLengthException, InvalidDicomError

from cxr.core.errors import ImageError
from cxr.core.imaging.decode import (
    BOMB_FLOOR_PIXELS,
    DECODE_FACTORS,
    MAX_PIXELS_PER_BYTE,
    DecodedImage,
    _check_size,
    _min_max,
    area_reduce,
    decode_factor,
    describe,
    extremes,
)
from cxr.core.imaging.dicom_policy import DicomPolicy, ImageSkipped
from cxr.core.privacy import DICOM_HASHED_COLUMNS

__all__ = ["DicomPolicy", "ImageSkipped", "decode_dicom"]

_BITS_ALLOCATED = frozenset({1, 8, 16, 32, 64})

#: What pydicom raises on malformed input: its parsers unpack with ``struct``, inflate deflated
#: datasets with ``zlib``, convert values lazily (``ValueError``, ``TypeError``,
#: ``BytesLengthException``) and index LUTs and sequences (``IndexError``, ``KeyError``); it
#: raises ``NotImplementedError`` for LUT or pixel layouts it does not support.
_PYDICOM_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    OverflowError,
    NotImplementedError,
    struct.error,
    zlib.error,
)


@dataclass(frozen=True)
class _PixelHeader:
    """The attributes that say how big the pixel array is, read (and refused) before it is."""

    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    syntax: Any  # pydicom UID

    @property
    def values(self) -> int:
        return self.rows * self.cols * self.frames * self.samples


def decode_dicom(
    data: bytes,
    *,
    max_pixels: int,
    hasher: Callable[[str], str] | None = None,
    policy: DicomPolicy | None = None,
    target_side: int | None = None,
) -> DecodedImage:
    """``policy`` (default: ``DicomPolicy()``) decides from the header whether the object is
    scored at all; anything outside it raises ``ImageSkipped`` before the pixels are read."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), defer_size=_DEFER_BYTES)
    except _PYDICOM_ERRORS as exc:
        raise ImageError(f"unreadable DICOM: {describe(exc)}") from exc
    try:
        has_pixels = "PixelData" in ds
        view = str(ds.get("ViewPosition", "") or "").strip().upper()
        if has_pixels or "Modality" in ds:  # an object (a CT slice, an SR) is skipped as what it is
            (policy or DicomPolicy()).check(ds)
    except _PYDICOM_ERRORS as exc:
        raise ImageError(f"corrupt DICOM header: {describe(exc)}") from exc
    if not has_pixels:
        raise ImageError("DICOM file has no pixel data")
    header = _read_header(ds)
    _check_header(header, ds, max_pixels, len(data))
    factor = decode_factor(header.rows, header.cols, target_side, DECODE_FACTORS)
    native = _native_pixels(ds, header, data) if factor > 1 else None
    wavelet = _j2k_reduced(ds, header, factor) if factor > 1 and native is None else None
    if wavelet is not None:  # already reduced: stretched by its own extremes (see jpeg2000)
        full = stored = wavelet
        full_extremes = None
    else:
        full, full_extremes = native if native else (_pixel_array(ds, header), None)
        stored = _reduced(full, factor)

    if stored.ndim == 3 and stored.shape[-1] == 3:  # colour secondary capture: no LUTs apply
        pixels = _min_max(stored.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    elif stored.ndim == 2:
        pixels = _gray_unit(full, stored, ds, full_extremes)
    else:
        raise ImageError(f"DICOM pixel array has shape {stored.shape}; expected one gray frame")
    if header.photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return DecodedImage(
        pixels=pixels.astype(np.float32),
        format="DICOM",
        bit_depth=header.bits_stored or header.bits_allocated,
        metadata=_safe_metadata(ds, view, hasher),
        film_size=(header.rows, header.cols),
        scale=factor if stored is not full or wavelet is not None else 1,
    )


def _read_header(ds: Any) -> _PixelHeader:
    from pydicom.uid import UID

    try:
        return _PixelHeader(
            rows=int(ds.get("Rows", 0) or 0),
            cols=int(ds.get("Columns", 0) or 0),
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            samples=int(ds.get("SamplesPerPixel", 1) or 1),
            bits_allocated=int(ds.get("BitsAllocated", 16) or 16),
            bits_stored=int(ds.get("BitsStored", 0) or 0),
            photometric=str(ds.get("PhotometricInterpretation", "") or "").strip().upper(),
            syntax=UID(str(ds.file_meta.get("TransferSyntaxUID", "") or "")),
        )
    except _PYDICOM_ERRORS as exc:
        raise ImageError(f"corrupt DICOM header: {describe(exc)}") from exc


def _is_compressed(header: _PixelHeader) -> bool:
    if not str(header.syntax):
        raise ImageError("DICOM file meta has no transfer syntax UID")
    try:
        return bool(header.syntax.is_compressed)
    except ValueError as exc:  # not a transfer syntax at all
        raise ImageError(f"DICOM transfer syntax {str(header.syntax)!r} is not a transfer syntax") from exc


def _check_header(header: _PixelHeader, ds: Any, max_pixels: int, file_bytes: int) -> None:
    """Refuse a header that cannot describe a radiograph, one over the pixel limit, and one that
    claims more pixel data than the file holds, all before the pixel array is allocated."""
    _check_size(header.cols, header.rows)
    if header.frames < 1:
        raise ImageError(f"corrupt DICOM header: NumberOfFrames is {header.frames}")
    if header.samples not in (1, 3):
        raise ImageError(f"DICOM SamplesPerPixel is {header.samples}; expected 1 (gray) or 3 (colour)")
    if header.bits_allocated not in _BITS_ALLOCATED:
        raise ImageError(f"DICOM BitsAllocated is {header.bits_allocated}; expected 1, 8, 16, 32 or 64")
    if header.values > max_pixels:
        raise ImageError(
            f"DICOM header claims {header.rows}×{header.cols} pixels × {header.frames} frames × "
            f"{header.samples} samples = {header.values} values, over the {max_pixels}-pixel limit "
            "(possible decompression bomb)"
        )
    if header.frames > 1:
        raise ImageError(f"DICOM holds {header.frames} frames; expected a single radiograph")
    try:
        held = _pixel_data_length(ds, file_bytes)
    except _PYDICOM_ERRORS as exc:
        raise ImageError(f"corrupt DICOM pixel data element: {describe(exc)}") from exc
    if _is_compressed(header):
        if header.values > BOMB_FLOOR_PIXELS and header.values > MAX_PIXELS_PER_BYTE * held:
            raise ImageError(
                f"DICOM header claims {header.values} values from {held} bytes of compressed pixel "
                f"data, over {MAX_PIXELS_PER_BYTE} per byte (truncated file or decompression bomb)"
            )
        return
    needed = math.ceil(header.values * header.bits_allocated / 8)
    if held < needed:
        raise ImageError(
            f"DICOM header claims {header.rows}×{header.cols}×{header.frames}×{header.samples} values "
            f"at {header.bits_allocated} bits = {needed} bytes of pixel data, but the file holds {held} "
            "(truncated or corrupt)"
        )


def _j2k_reduced(ds: Any, header: _PixelHeader, factor: int) -> np.ndarray | None:
    """A single-frame gray JPEG 2000 film decoded at 1/``factor`` (``jpeg2000``), or None where
    that path does not apply."""
    from pydicom.encaps import generate_frames

    from cxr.core.imaging.jpeg2000 import J2K_SYNTAXES, decode_reduced

    if str(header.syntax) not in J2K_SYNTAXES or header.frames != 1 or header.samples != 1:
        return None
    try:
        if int(ds.get("PixelRepresentation", 0) or 0) != 0:
            return None
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except (*_PYDICOM_ERRORS, StopIteration) as exc:
        raise ImageError(f"corrupt DICOM pixel data: {describe(exc)}") from exc
    return decode_reduced(frame, header.rows, header.cols, factor)


def _deferred_pixel_data(ds: Any) -> tuple[int, int] | None:
    """(offset in the file, declared length) of pixel data ``dcmread`` left unread
    (``_DEFER_BYTES``); None where it was read."""
    element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    tell = getattr(element, "value_tell", None)
    if getattr(element, "value", None) is None and tell is not None:
        return int(tell), int(element.length)
    return None


def _pixel_data_length(ds: Any, file_bytes: int) -> int:
    """How many bytes of pixel data the file holds, without reading a deferred value: its
    declared length, cut short where the file (``file_bytes`` long) ends."""
    deferred = _deferred_pixel_data(ds)
    if deferred:
        offset, length = deferred
        return max(0, min(length, file_bytes - offset))
    return len(ds.PixelData)


#: The decoder pydicom should use where it has several: CharLS (pyjpegls) decodes JPEG-LS 3.7
#: times faster than libjpeg (pylibjpeg-libjpeg), which pydicom would try first (a 12-bit
#: 2500×2048 film: 136 ms against 596 ms), to the same pixels.
_PREFERRED_PLUGINS = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS Near-lossless
}


def _pixel_array(ds: Any, header: _PixelHeader) -> np.ndarray:
    plugin = _PREFERRED_PLUGINS.get(str(header.syntax))
    if plugin and _plugin_available(header.syntax, plugin):
        ds.pixel_array_options(decoding_plugin=plugin)
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if _is_compressed(header) and not _decoder_available(header.syntax):
            raise ImageError(
                f"cannot decompress DICOM transfer syntax {header.syntax.name}: install the pylibjpeg "
                "plugins (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"
            ) from exc
        raise ImageError(f"cannot decode DICOM pixel data: {describe(exc)}") from exc
    except _PYDICOM_ERRORS as exc:
        raise ImageError(f"corrupt DICOM pixel data: {describe(exc)}") from exc


def _gray_unit(
    full: np.ndarray, stored: np.ndarray, ds: Any, full_extremes: tuple[float, float] | None = None
) -> np.ndarray:
    """The LUTs applied to ``stored`` (``full`` or its reduction), stretched onto [0, 1].

    The stretch runs from the lowest to the highest value after the LUTs *on the full film*:
    block means never reach the full film's extremes (its noise), so stretching a reduced film
    by its own would brighten it. For a reduced film the LUTs are applied once to every stored
    value between the full film's extremes (at most ``_MAX_TABLE`` of them: a 12-bit film has
    4,096), and the reduced film is looked up in that table. A linear window and a VOI LUT curve
    are monotonic, so the table's extremes after the LUTs are the full film's.

    ``full_extremes`` is the full film's (min, max) where the caller already read them."""
    if stored is full:
        return _min_max(_apply_luts(full, ds))
    low, high = (int(value) for value in (full_extremes or extremes(full)))
    if stored.dtype.kind in "ui" and high - low < _MAX_TABLE:
        levels = np.arange(low, high + 1, dtype=np.int64).astype(full.dtype)
        table = _min_max(_apply_luts(levels, ds))
        if low >= 0:  # index by the stored value itself: no offset array (twice as fast)
            return np.take(np.concatenate([np.zeros(low, np.float32), table]), stored)
        return table[np.subtract(stored, low, dtype=np.int64)]
    bounds = np.array([low, high], dtype=full.dtype)
    values = _apply_luts(np.concatenate([stored.ravel(), bounds]), ds)
    return _min_max(values)[:-2].reshape(stored.shape)


#: The most stored values a reduced film's LUT table holds (a 16-bit film's whole range).
_MAX_TABLE = 1 << 16


#: Elements larger than this are left unread by ``dcmread`` until used: the pixel data of a
#: hospital film (10 MB), which the reduced path then views in the file's own bytes instead of
#: having pydicom copy it (4 ms of a 12-bit 2500×2048 film's 9 ms before).
_DEFER_BYTES = 1 << 20
_PIXEL_DATA = 0x7FE00010


def _native_pixels(
    ds: Any, header: _PixelHeader, data: bytes
) -> tuple[np.ndarray, tuple[float, float]] | None:
    """An uncompressed little-endian, unsigned, single-frame gray film's stored values as a view
    of the pixel data in ``data``, the file's bytes (no copy; ``area_reduce`` reads it once), and
    their (min, max), read in one pass. None where pydicom must decode: anything else, or bits
    above ``BitsStored`` set (pydicom masks them)."""
    if (
        header.frames != 1
        or header.samples != 1
        or header.bits_allocated not in (8, 16)
        or _is_compressed(header)
        or not header.syntax.is_little_endian
    ):
        return None
    try:
        if int(ds.get("PixelRepresentation", 0) or 0) != 0:
            return None
        dtype = np.uint8 if header.bits_allocated == 8 else np.dtype("<u2")
        count = header.rows * header.cols
        deferred = _deferred_pixel_data(ds)
        if deferred:  # view it where it lies in the file's bytes
            view = np.frombuffer(data, dtype=dtype, count=count, offset=deferred[0])
        else:
            view = np.frombuffer(ds.PixelData, dtype=dtype, count=count)
    except (*_PYDICOM_ERRORS, TypeError):
        return None
    view = view.reshape(header.rows, header.cols)
    low, high = extremes(view)
    if 0 < header.bits_stored < header.bits_allocated and int(high) >> header.bits_stored:
        return None
    return view, (low, high)


def _reduced(stored: np.ndarray, factor: int) -> np.ndarray:
    """The stored values, area-reduced by ``factor`` while still integers (a 12-bit film's block
    means are 12-bit values, which the modality and VOI LUTs take as they are)."""
    if factor <= 1 or stored.ndim not in (2, 3) or min(stored.shape[:2]) // factor < 1:
        return stored
    if stored.dtype == np.bool_:
        stored = stored.astype(np.uint8)
    return area_reduce(stored, factor)


def _plugin_available(syntax: Any, plugin: str) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return plugin in get_decoder(syntax).available_plugins
    except NotImplementedError:
        return False


def _decoder_available(syntax: Any) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:  # pydicom knows no decoder for this syntax at all
        return False


def _apply_luts(stored: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT (rescale) then VOI LUT or window; a missing, flat or unusable window falls
    back to the full range (a window is a display hint), a corrupt LUT is refused."""
    from pydicom.pixels import apply_modality_lut

    try:
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are refused below
            values = np.asarray(apply_modality_lut(stored, ds))
    except _PYDICOM_ERRORS as exc:
        raise ImageError(f"corrupt DICOM modality LUT: {describe(exc)}") from exc
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise ImageError("DICOM rescale slope/intercept give non-finite values")
        if np.abs(values).max(initial=0) < 2**53 and np.all(np.mod(values, 1) == 0):
            values = values.astype(np.int64)  # a VOI LUT is indexed by integer values
    windowed = _apply_voi(values, ds)
    if windowed is None or not np.isfinite(windowed).all() or windowed.max() <= windowed.min():
        return values.astype(np.float64)
    return windowed


def _apply_voi(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The VOI LUT (preferred) or the window applied to ``values``; None if there is neither."""
    from pydicom.pixels import apply_voi, apply_windowing

    try:
        sequence = ds.get("VOILUTSequence") or []
        has_lut = bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]
    except _PYDICOM_ERRORS as exc:
        raise ImageError(f"corrupt DICOM VOI LUT: {describe(exc)}") from exc
    if has_lut:
        try:
            return np.asarray(apply_voi(values, ds), dtype=np.float64)
        except _PYDICOM_ERRORS as exc:  # e.g. struct.error: LUTData shorter than its descriptor says
            raise ImageError(f"corrupt DICOM VOI LUT: {describe(exc)}") from exc
    if not _usable_window(ds):
        return None
    try:
        return np.asarray(apply_windowing(values, ds), dtype=np.float64)
    except _PYDICOM_ERRORS as exc:
        raise ImageError(f"corrupt DICOM window: {describe(exc)}") from exc


def _usable_window(ds: Any) -> bool:
    """A window centre and width that pydicom can apply: finite, and a width of at least 1 (the
    standard's rule for the default LINEAR function; LINEAR_EXACT and SIGMOID need > 0)."""
    try:
        if "WindowCenter" not in ds or "WindowWidth" not in ds:
            return False
        centre, width = (_first_float(ds[tag].value) for tag in ("WindowCenter", "WindowWidth"))
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    except _PYDICOM_ERRORS:
        return False
    if not (math.isfinite(centre) and math.isfinite(width)):
        return False
    return width >= 1 if function == "LINEAR" else width > 0


def _first_float(value: Any) -> float:
    if isinstance(value, str | bytes) or not hasattr(value, "__getitem__"):
        return float(value)
    return float(value[0])


def _safe_metadata(ds: Any, view: str, hasher: Callable[[str], str] | None) -> dict[str, Any]:
    tags = DICOM_HASHED_COLUMNS
    try:
        modality = str(ds.get("Modality", "") or "")
        values = {key: str(ds.get(tag, "") or "").strip() for tag, key in tags.items()} if hasher else {}
    except _PYDICOM_ERRORS as exc:
        raise ImageError(f"corrupt DICOM identifiers: {describe(exc)}") from exc
    meta: dict[str, Any] = {"view": view or "unknown", "modality": modality}
    if hasher is not None:
        meta.update({key: hasher(value) for key, value in values.items() if value})
    return meta
