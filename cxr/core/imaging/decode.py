"""Bytes → a grayscale radiograph with a stated pixel contract, or a clear ImageError.

The contract every decoder returns (``DecodedImage.pixels``): float32, shape (height, width),
values in [0, 1], 0 = black, MONOCHROME2 (air dark, bone bright), EXIF orientation applied.
Everything that can go wrong with a file from a hospital archive (empty, truncated, not an image,
a decompression bomb, a thumbnail, an animation) is refused *here*, with the reason.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr.core.errors import ImageError

MIN_SIDE = 32  # smaller than this is a thumbnail or an icon, not a radiograph
_DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class DecodedImage:
    """A decoded radiograph and what was learnt about the file on the way."""

    pixels: np.ndarray  # float32 (H, W) in [0, 1]
    format: str  # "PNG", "JPEG", "DICOM", ...
    bit_depth: int
    metadata: dict[str, Any] = field(default_factory=dict)  # never identifying values in clear

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def is_dicom(data: bytes) -> bool:
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    hasher: Callable[[str], str] | None = None,
    dicom_policy: Any = None,
) -> DecodedImage:
    """Decode PNG/JPEG/TIFF/WebP/BMP (through Pillow) or DICOM (through pydicom).

    ``hasher`` turns DICOM identifiers (patient id, UIDs) into salted hashes for the metadata;
    without one they are dropped. ``dicom_policy`` (a ``DicomPolicy``; default: its defaults)
    says which DICOM objects are scored; others raise ``ImageSkipped``.

    Whatever the bytes, the result is valid pixels or an
    ``ImageError``: each stage turns its decoder's exceptions into a reason that names it, and a
    last net here catches what a third-party decoder raises that no stage foresaw, so one bad file
    can never take a worker down with it.
    """
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"file is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        if is_dicom(data):
            from cxr.core.imaging.dicom import decode_dicom  # pydicom only when needed

            decoded = decode_dicom(data, max_pixels=max_pixels, hasher=hasher, policy=dicom_policy)
        else:
            decoded = _decode_with_pillow(data, max_pixels=max_pixels)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError("image too large to decode in memory") from exc
    except Exception as exc:  # the safety net: see the docstring
        raise ImageError(f"decoder error: {describe(exc)}") from exc
    _check_size(decoded.width, decoded.height)
    return decoded


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line and at most 200 characters, for a failure's reason."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 200 else text[:199] + "…"


def _check_size(width: int, height: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"image is {width}×{height} pixels, below the {MIN_SIDE}-pixel minimum")


#: Above this many pixels, a file must hold at least one byte per ``MAX_PIXELS_PER_BYTE`` pixels.
BOMB_FLOOR_PIXELS = 4_000_000
#: Deflate cannot compress better than 1032:1, and a radiograph's noise keeps every codec far
#: below that; a header claiming more pixels per byte of file describes data the file lacks.
MAX_PIXELS_PER_BYTE = 1024


def _check_pixels(width: int, height: int, max_pixels: int, file_bytes: int | None = None) -> None:
    """Refuse by header, before anything is allocated: over ``max_pixels``, or (above
    ``BOMB_FLOOR_PIXELS``) more pixels than the file's size can encode. Without the second check
    a 1 KB JPEG claiming 7745×7745 (just under the default limit) decodes to 60 million gray
    pixels in about 2 s and 300 MiB: a decompression bomb under the limit."""
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(
            f"image header claims {width}×{height} = {pixels} pixels, over the "
            f"{max_pixels}-pixel limit (possible decompression bomb)"
        )
    if file_bytes is not None and pixels > BOMB_FLOOR_PIXELS and pixels > MAX_PIXELS_PER_BYTE * file_bytes:
        raise ImageError(
            f"image header claims {width}×{height} = {pixels} pixels from a {file_bytes}-byte file, "
            f"over {MAX_PIXELS_PER_BYTE} pixels per byte (truncated file or decompression bomb)"
        )


#: What Pillow's format plugins raise on malformed files, besides ``OSError``: header parsers
#: unpack with ``struct`` and index tag tables; TIFF's frame counting raises ``TypeError``
#: ("Missing dimensions"), PNG's compressed text and ICC chunks ``zlib.error``; huge header
#: values overflow C integers (``OverflowError``) or make a ratio divide by zero.
_PILLOW_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    TypeError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
    ZeroDivisionError,
    OverflowError,
)


def _decode_with_pillow(data: bytes, *, max_pixels: int) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageError("not a recognised image (expected PNG, JPEG, TIFF, WebP, BMP or DICOM)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from exc
    except _PILLOW_ERRORS as exc:
        raise ImageError(f"truncated or corrupt image header: {describe(exc)}") from exc

    fmt = image.format or "unknown"
    width, height = image.size
    _check_pixels(width, height, max_pixels, len(data))
    try:
        frames = getattr(image, "n_frames", 1)  # TIFF and GIF parse every frame's header for this
    except _PILLOW_ERRORS as exc:
        raise ImageError(f"corrupt {fmt} frame headers: {describe(exc)}") from exc
    if frames > 1:
        raise ImageError(f"{fmt} holds {frames} frames; expected a single radiograph")
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        pixels, bit_depth = _to_gray_unit(image)
    except _PILLOW_ERRORS as exc:
        raise ImageError(f"truncated or corrupt {fmt}: {describe(exc)}") from exc
    return DecodedImage(pixels=pixels, format=fmt, bit_depth=bit_depth)


def _to_gray_unit(image: Image.Image) -> tuple[np.ndarray, int]:
    """Any Pillow mode → float32 gray in [0, 1]. Colour is reduced by ITU-R 601 luma; alpha is
    composited over black (transparent background counts as no signal)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0, 16
    if mode == "I":
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max(initial=0) <= 65535 else float(array.max())
        return (np.clip(array, 0, None) / top).astype(np.float32), 16 if top == 65535.0 else 32
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        return _min_max(array), 32
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "L":
        image = image.convert("L")
    return np.divide(np.asarray(image), np.float32(255.0), dtype=np.float32), 8  # one pass


def _min_max(array: np.ndarray) -> np.ndarray:
    """Stretch ``array`` onto [0, 1] (a flat image becomes black).

    NaN or infinity in a radiograph's values (a float TIFF, a DICOM rescaled past float range)
    means a corrupt file, not a dark pixel: refused rather than silently replaced. Values near
    float32's limits, or a range too narrow for float32 to divide by, are stretched in float64.
    """
    low, high = float(array.min()), float(array.max())  # NaN anywhere makes both NaN
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ImageError("image holds non-finite pixel values (NaN or infinity)")
    if high <= low:
        return np.zeros(array.shape, dtype=np.float32)
    extreme = max(-low, high) > 1e30 or high - low < 1e-30
    work = np.float64 if array.dtype.itemsize > 4 or extreme else np.float32
    stretched = np.subtract(array, low, dtype=work)
    np.divide(stretched, high - low, out=stretched)
    return np.clip(stretched, 0.0, 1.0, out=stretched).astype(np.float32, copy=False)
