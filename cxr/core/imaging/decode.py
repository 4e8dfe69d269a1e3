"""Bytes → a grayscale radiograph with a stated pixel contract, or a clear ImageError.

The contract every decoder returns (``DecodedImage.pixels``): float32, shape (height, width),
values in [0, 1], 0 = black, MONOCHROME2 (air dark, bone bright), EXIF orientation applied.
Everything that can go wrong with a file from a hospital archive (empty, truncated, not an image,
a decompression bomb, a thumbnail, an animation) is refused *here*, with the reason.
"""

from __future__ import annotations

import io
import warnings
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
    data: bytes, *, max_bytes: int, max_pixels: int, hasher: Callable[[str], str] | None = None
) -> DecodedImage:
    """Decode PNG/JPEG/TIFF/WebP/BMP (through Pillow) or DICOM (through pydicom).

    ``hasher`` turns DICOM identifiers (patient id, UIDs) into salted hashes for the metadata;
    without one they are dropped.
    """
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"file is {len(data)} bytes, over the {max_bytes}-byte limit")
    if is_dicom(data):
        from cxr.core.imaging.dicom import decode_dicom  # pydicom only when needed

        decoded = decode_dicom(data, max_pixels=max_pixels, hasher=hasher)
    else:
        decoded = _decode_with_pillow(data, max_pixels=max_pixels)
    _check_size(decoded.width, decoded.height)
    return decoded


def _check_size(width: int, height: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"image is {width}×{height} pixels, below the {MIN_SIDE}-pixel minimum")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            f"image header claims {width}×{height} = {width * height} pixels, over the "
            f"{max_pixels}-pixel limit (possible decompression bomb)"
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
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"truncated or corrupt image header: {exc}") from exc

    fmt = image.format or "unknown"
    width, height = image.size
    _check_pixels(width, height, max_pixels)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ImageError(f"{fmt} holds {frames} frames; expected a single radiograph")
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        pixels, bit_depth = _to_gray_unit(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"truncated or corrupt {fmt}: {exc}") from exc
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
    array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)
