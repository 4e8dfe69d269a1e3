"""A DICOM JPEG 2000 frame decoded at a reduced resolution level, for the reduced decode path.

A JPEG 2000 codestream is a wavelet pyramid: its level-r approximation (the LL band) is the film
at 1/2^r of its size, and OpenJPEG can stop decoding there, skipping the finer levels' code
blocks and inverse transforms, which are nearly all of the work. On a 12-bit 2500×2048 lossless
film that is 48 ms at 1/4 against 720 ms at full size. Pillow drives OpenJPEG with its
``reduce`` attribute; pydicom's decoder (pylibjpeg-openjpeg) has no such option.

The approximation is the wavelet's low-pass, not an area mean: close to it (a mean absolute
difference of about 0.5 % of the stored range on the development corpus) but not equal, so the
tests bound the difference to the full-size decode as for every reduced path. A film's reduced
pixels are also stretched by their own extremes, which the full film's noise can exceed a
little; everything else (LUTs, photometric) is the DICOM path's.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from cxr.core.errors import ImageError
from cxr.core.imaging.decode import _PILLOW_ERRORS, describe

#: JPEG 2000 Image Compression (Lossless Only) and JPEG 2000 Image Compression.
J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
_SOC_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the image and tile size marker


def codestream_precision(frame: bytes) -> tuple[int, int, int, bool] | None:
    """(width, height, bits, signed) of a single-component raw codestream, from its SIZ marker;
    None for anything else (a JP2 wrapper, several components, a short or odd header)."""
    if len(frame) < 43 or frame[:4] != _SOC_SIZ:
        return None
    width, height, x_offset, y_offset = struct.unpack(">IIII", frame[8:24])
    (components,) = struct.unpack(">H", frame[40:42])
    if components != 1:
        return None
    depth = frame[42]
    return width - x_offset, height - y_offset, (depth & 0x7F) + 1, bool(depth & 0x80)


def decode_reduced(frame: bytes, rows: int, cols: int, factor: int) -> np.ndarray | None:
    """The frame's stored values at 1/``factor`` (a power of two), (rows // factor, cols //
    factor), in the codestream's own integer scale; None where this path does not apply (then
    the caller decodes at full size): not a plain unsigned gray codestream of 2-16 bits, or a
    factor that is not a power of two. Raises ``ImageError`` for a corrupt codestream or one
    whose size is not the header's."""
    from PIL import Image

    described = codestream_precision(frame)
    if described is None or factor < 2 or factor & (factor - 1):
        return None
    width, height, bits, signed = described
    if signed or not 2 <= bits <= 16:
        return None
    if (width, height) != (cols, rows):
        raise ImageError(
            f"DICOM header says {cols}×{rows} pixels but its JPEG 2000 codestream holds {width}×{height}"
        )
    try:
        image = Image.open(io.BytesIO(frame), formats=["JPEG2000"])
        image.reduce = factor.bit_length() - 1  # resolution levels to discard
        image.load()
        levels = np.asarray(image)
    except (*_PILLOW_ERRORS, MemoryError) as exc:  # what Pillow raises on a bad file, as decode's
        raise ImageError(f"corrupt JPEG 2000 pixel data: {describe(exc)}") from exc
    if image.mode == "I;16":  # Pillow widens every precision to 16 bits
        levels = np.right_shift(levels, 16 - bits) if bits < 16 else levels
    elif image.mode != "L":
        return None
    return np.ascontiguousarray(levels[: rows // factor, : cols // factor])
