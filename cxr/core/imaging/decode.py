"""Bytes → a grayscale radiograph with a stated pixel contract, or a clear ImageError.

The contract every decoder returns (``DecodedImage.pixels``): float32, shape (height, width),
values in [0, 1], 0 = black, MONOCHROME2 (air dark, bone bright), EXIF orientation applied.

Everything that can go wrong with a file from a hospital archive (empty, truncated, not an image,
a decompression bomb, a thumbnail, an animation) is refused *here*, with the reason.

Decode scale: a caller that knows the model's input (``InputContract.decode_side``) passes it as
``target_side``, and a large film is then decoded already reduced, in its own integer domain,
before anything is converted to float: a JPEG by DCT-domain scaling (Pillow's ``draft``, factors
1, 2, 4, 8), a DICOM or a 16-bit PNG/TIFF by an area mean over k×k blocks of stored integers
(k a power of two, ``DECODE_FACTORS``). The factor is always the largest allowed one that keeps
the film's shorter side at least ``target_side`` (``decode_factor``). ``DecodedImage.scale``
says how many film pixels one decoded pixel spans, so that anything located on the decoded
pixels (an explanation's map or box) maps back onto the original film by multiplying by it.
Without ``target_side`` the film is decoded at full size (the slow path the fast one is tested
against).
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
#: Below this range of decoded values (on [0, 1]: about five grey levels of 255) a film has no
#: contrast: a blank page or a failed export (``no_contrast``).
MIN_CONTRAST = 0.02
_DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class DecodedImage:
    """A decoded radiograph and what was learnt about the file on the way."""

    pixels: np.ndarray  # float32 (H, W) in [0, 1], possibly reduced (see ``scale``)
    format: str  # "PNG", "JPEG", "DICOM", ...
    bit_depth: int
    metadata: dict[str, Any] = field(default_factory=dict)  # never identifying values in clear
    #: The film's own (height, width), after EXIF orientation; None: the pixels' shape.
    film_size: tuple[int, int] | None = None
    #: Film pixels per decoded pixel, the decode factor (1 at full size): decoded coordinates ×
    #: scale = film coordinates (a reduction drops the last, partial block of rows and columns).
    scale: float = 1.0

    @property
    def height(self) -> int:
        """The film's height in its own pixels (not the reduced ``pixels``')."""
        return self.film_size[0] if self.film_size else int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return self.film_size[1] if self.film_size else int(self.pixels.shape[1])


def is_dicom(data: bytes) -> bool:
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    hasher: Callable[[str], str] | None = None,
    dicom_policy: Any = None,
    target_side: int | None = None,
) -> DecodedImage:
    """Decode PNG/JPEG/TIFF/WebP/BMP (through Pillow) or DICOM (through pydicom).

    ``target_side`` (the model's ``InputContract.decode_side``) lets a large film be decoded
    reduced (see the module's docstring); None decodes at full size.

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

            decoded = decode_dicom(
                data, max_pixels=max_pixels, hasher=hasher, policy=dicom_policy, target_side=target_side
            )
        else:
            decoded = _decode_with_pillow(data, max_pixels=max_pixels, target_side=target_side)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError("image too large to decode in memory") from exc
    except Exception as exc:  # the safety net: see the docstring
        raise ImageError(f"decoder error: {describe(exc)}") from exc
    _check_size(decoded.width, decoded.height)
    return decoded


def no_contrast(pixels: np.ndarray) -> str | None:
    """The skip reason for decoded pixels that span (almost) no range, else None. Scoring such an
    image means nothing, and its features can sit near the average film, where the shift score
    cannot be trusted to flag it: the worker and the web refuse it before the model runs."""
    from cxr.core.outcomes import SkipReason

    spread = float(np.ptp(pixels)) if pixels.size else 0.0
    return f"{SkipReason.NO_CONTRAST.value} (pixel range {spread:.3f})" if spread < MIN_CONTRAST else None


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line and at most 200 characters, for a failure's reason."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 200 else text[:199] + "…"


_EXIF_ORIENTATION = 0x0112  # values 5-8 turn the image a quarter: width and height swap

#: DCT-domain scale factors libjpeg offers (Pillow's ``draft``).
JPEG_FACTORS = (1, 2, 4, 8)
#: The decode factors of every other format: powers of two, as JPEG's, because ``area_reduce``
#: halves fast and divides by anything else slowly (a 3000×2400 film: 2.4 ms at 4, 5.8 ms at 5).
DECODE_FACTORS = (1, 2, 4, 8, 16)


def decode_factor(
    height: int, width: int, target_side: int | None, allowed: tuple[int, ...] | None = None
) -> int:
    """The decode-scale rule: the largest factor k (from ``allowed``, else any integer) with
    ``min(height, width) / k >= target_side``; 1 without a target or for a film already small."""
    if not target_side or target_side <= 0:
        return 1
    largest = max(1, min(height, width) // target_side)
    if allowed is None:
        return largest
    return max(k for k in allowed if k <= largest) if largest >= min(allowed) else 1


def area_reduce(array: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor``×``factor`` block of an (H, W) or (H, W, C) array, in the
    array's own dtype (integers rounded): OpenCV's area filter, which at an integer factor is a
    plain block mean. The last ``H mod factor`` rows and ``W mod factor`` columns (fewer than
    ``factor``) are dropped, so the scale stays exactly ``factor`` on both axes.

    The factor's twos are taken as successive halvings, each a rounded 2×2 mean: OpenCV
    vectorises only that case, three times faster on a 2500×2048 film at factor 4 than one pass
    (0.7 ms against 2.4 ms). Each pass rounds, so an integer result can be off the exact block
    mean by half a level per pass (a level and a half at factor 8; of 4,096 levels in a 12-bit
    film)."""
    if factor <= 1:
        return array
    rows, cols = array.shape[0] // factor, array.shape[1] // factor
    if rows < 1 or cols < 1:
        return array
    block = array[: rows * factor, : cols * factor]
    channels_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if channels_ok and array.dtype in (np.uint8, np.uint16, np.int16, np.float32):
        import cv2

        pixel = block.itemsize * (block.shape[2] if block.ndim == 3 else 1)
        if block.strides[-1] != block.itemsize or block.strides[1] != pixel:
            block = np.ascontiguousarray(block)  # OpenCV takes row strides, not pixel ones
        remaining = factor
        while remaining % 2 == 0:
            remaining //= 2
            size = (cols * remaining, rows * remaining)
            block = cv2.resize(block, size, interpolation=cv2.INTER_AREA)
        if remaining > 1:
            block = cv2.resize(block, (cols, rows), interpolation=cv2.INTER_AREA)
        return block
    shape = (rows, factor, cols, factor, *array.shape[2:])
    means = block.reshape(shape).mean(axis=(1, 3), dtype=np.float64)  # only the reduced array
    if array.dtype.kind in "iub":
        return np.rint(means).astype(array.dtype)
    return means.astype(array.dtype)


def extremes(array: np.ndarray) -> tuple[float, float]:
    """(min, max) of an array in one pass where OpenCV can (a 2-D integer or float32 array:
    0.2 ms on a 12-bit 2500×2048 film, where NumPy's ``min`` and ``max`` take two passes)."""
    if array.size == 0:
        raise ImageError("empty pixel array")
    if array.ndim == 2 and array.dtype in (np.uint8, np.uint16, np.int16, np.float32):
        import cv2

        low, high, _, _ = cv2.minMaxLoc(array)
        return float(low), float(high)
    return float(array.min()), float(array.max())


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


def _decode_with_pillow(data: bytes, *, max_pixels: int, target_side: int | None = None) -> DecodedImage:
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
        if fmt == "JPEG" and image.mode in ("L", "RGB", "YCbCr"):
            _jpeg_draft(image, decode_factor(height, width, target_side, JPEG_FACTORS))
        image.load()
        jpeg_scale = round(width / image.size[0])  # the DCT scale libjpeg used (1 without draft)
        orientation = image.getexif().get(_EXIF_ORIENTATION)
        quarter_turn = orientation in (5, 6, 7, 8)
        if orientation in (2, 3, 4, 5, 6, 7, 8):  # exif_transpose copies even an upright film
            image = ImageOps.exif_transpose(image) or image
        film_size = (width, height) if quarter_turn else (height, width)
        factor = 1 if fmt == "JPEG" else decode_factor(height, width, target_side, DECODE_FACTORS)
        pixels, bit_depth = _to_gray_unit(image, factor)
    except _PILLOW_ERRORS as exc:
        raise ImageError(f"truncated or corrupt {fmt}: {describe(exc)}") from exc
    scale = jpeg_scale if fmt == "JPEG" else factor if pixels.shape != film_size else 1
    return DecodedImage(pixels=pixels, format=fmt, bit_depth=bit_depth, film_size=film_size, scale=scale)


def _jpeg_draft(image: Image.Image, factor: int) -> None:
    """Ask libjpeg for the film at 1/``factor`` (DCT-domain scaling, before anything is
    decoded), in gray: a colour JPEG's luma plane is decoded alone."""
    if factor <= 1:
        return
    width, height = image.size
    image.draft("L", (width // factor, height // factor))


def _to_gray_unit(image: Image.Image, factor: int = 1) -> tuple[np.ndarray, int]:
    """Any Pillow mode → float32 gray in [0, 1], reduced by ``factor`` (``area_reduce``) on the
    integer values before the float conversion. Colour is reduced by ITU-R 601 luma; alpha is
    composited over black (transparent background counts as no signal)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        levels = area_reduce(np.asarray(image).astype(np.uint16, copy=False), factor)
        return np.divide(levels, np.float32(65535.0), dtype=np.float32), 16
    if mode == "I":  # the full film's maximum decides the scale, as without reduction
        full = np.asarray(image)
        peak = int(full.max(initial=0))
        array = np.asarray(area_reduce(full, factor), dtype=np.float64)
        top = 65535.0 if peak <= 65535 else float(peak)
        return (np.clip(array, 0, None) / top).astype(np.float32), 16 if top == 65535.0 else 32
    if mode == "F":
        full = np.asarray(image, dtype=np.float32)
        return _min_max(area_reduce(full, factor), (float(full.min()), float(full.max()))), 32
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "L":
        image = image.convert("L")
    levels = area_reduce(np.asarray(image), factor)
    return np.divide(levels, np.float32(255.0), dtype=np.float32), 8  # one pass


def _min_max(array: np.ndarray, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Stretch ``array`` onto [0, 1] (a flat image becomes black); ``bounds`` (low, high) are the
    full film's extremes when ``array`` is its reduction (block means never reach them).

    NaN or infinity in a radiograph's values (a float TIFF, a DICOM rescaled past float range)
    means a corrupt file, not a dark pixel: refused rather than silently replaced. Values near
    float32's limits, or a range too narrow for float32 to divide by, are stretched in float64.
    """
    low, high = bounds or (float(array.min()), float(array.max()))  # NaN anywhere makes both NaN
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ImageError("image holds non-finite pixel values (NaN or infinity)")
    if high <= low:
        return np.zeros(array.shape, dtype=np.float32)
    extreme = max(-low, high) > 1e30 or high - low < 1e-30
    work = np.float64 if array.dtype.itemsize > 4 or extreme else np.float32
    stretched = np.subtract(array, low, dtype=work)
    np.divide(stretched, high - low, out=stretched)
    return np.clip(stretched, 0.0, 1.0, out=stretched).astype(np.float32, copy=False)
