"""Decoding and preprocessing: the pixel contract, and a clear reason for every bad file."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr.core.errors import ImageError
from cxr.core.imaging import InputContract, decode_image, preprocess

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 40_000_000}


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1))


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width``×``height``: a decompression-bomb shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_8bit_png_keeps_values_and_orientation():
    pixels = gradient().astype(np.uint8)
    decoded = decode_image(encode(Image.fromarray(pixels, "L"), "PNG"), **LIMITS)
    assert (decoded.format, decoded.width, decoded.height, decoded.bit_depth) == ("PNG", 64, 48, 8)
    assert decoded.pixels.dtype == np.float32
    np.testing.assert_allclose(decoded.pixels, pixels / 255.0, atol=1e-6)


def test_16bit_png_uses_the_full_range():
    pixels = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    decoded = decode_image(encode(Image.fromarray(pixels), "PNG"), **LIMITS)
    assert decoded.bit_depth == 16
    assert decoded.pixels.min() == 0.0 and decoded.pixels.max() == pytest.approx(1.0)


def test_rgb_jpeg_becomes_gray():
    rgb = np.stack([gradient()] * 3, axis=-1).astype(np.uint8)
    decoded = decode_image(encode(Image.fromarray(rgb, "RGB"), "JPEG", quality=95), **LIMITS)
    assert decoded.pixels.ndim == 2
    np.testing.assert_allclose(decoded.pixels, gradient() / 255.0, atol=0.03)


def test_palette_png_with_alpha_composites_over_black():
    image = Image.new("P", (40, 40))
    image.putpalette([255, 255, 255] * 256)
    image.info["transparency"] = 0
    decoded = decode_image(encode(image, "PNG", transparency=0), **LIMITS)
    assert decoded.pixels.max() == 0.0  # fully transparent white is no signal


def test_exif_rotation_is_applied():
    image = Image.fromarray(np.zeros((40, 80), dtype=np.uint8), "L")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif), **LIMITS)
    assert (decoded.width, decoded.height) == (40, 80)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"<html><body>not an image</body></html>", "not a recognised image"),
        (b"plain text named .png", "not a recognised image"),
        (encode(Image.new("L", (64, 64), 128), "PNG")[:80], "truncated or corrupt PNG"),
        (encode(Image.new("L", (64, 64), 128), "JPEG")[:300], "truncated or corrupt image header"),
        (
            encode(
                Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)), "JPEG"
            )[:4000],
            "truncated or corrupt JPEG",
        ),
        (encode(Image.new("L", (1, 1)), "PNG"), "1×1 pixels, below"),
        (png_with_claimed_size(50_000, 50_000), "decompression bomb"),
        (png_with_claimed_size(10_000, 5_000), "10000×5000 = 50000000 pixels, over the 40000000-pixel limit"),
    ],
    ids=[
        "empty",
        "html",
        "text",
        "truncated-png",
        "truncated-jpeg-header",
        "truncated-jpeg-data",
        "1x1",
        "bomb-header",
        "over-our-limit",
    ],
)
def test_bad_files_fail_with_their_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data, **LIMITS)


def test_too_many_bytes_is_refused_before_decoding():
    with pytest.raises(ImageError, match="over the 100-byte limit"):
        decode_image(b"x" * 101, max_bytes=100, max_pixels=10)


def test_animated_gif_is_refused():
    frames = [Image.new("L", (40, 40), v) for v in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="holds 2 frames"):
        decode_image(buffer.getvalue(), **LIMITS)


@pytest.mark.parametrize(
    ("normalization", "low", "high"),
    [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0), ("raw255", 0.0, 255.0)],
)
def test_preprocess_shape_and_range(normalization, low, high):
    pixels = (gradient(200, 100) / 255.0).astype(np.float32)
    contract = InputContract(height=32, width=48, channels=3, normalization=normalization)
    out = preprocess(pixels, contract)
    assert out.shape == (32, 48, 3) and out.dtype == np.float32
    tolerance = 0.02 * (high - low)  # resizing averages the extreme columns with their neighbours
    assert out.min() == pytest.approx(low, abs=tolerance) and out.max() == pytest.approx(high, abs=tolerance)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # gray replicated


def test_preprocess_pad_keeps_aspect():
    pixels = np.ones((100, 200), dtype=np.float32)
    out = preprocess(pixels, InputContract(height=64, width=64, channels=1, resize="pad"))
    assert out.shape == (64, 64, 1)
    assert out[0, 32, 0] == 0.0 and out[32, 32, 0] == pytest.approx(1.0)


def test_preprocess_enforces_its_input_contract():
    contract = InputContract(height=8, width=8)
    with pytest.raises(ImageError, match="values in \\[0, 1\\]"):
        preprocess(np.full((10, 10), 255.0, dtype=np.float32), contract)
    with pytest.raises(ImageError, match="float32"):
        preprocess(np.zeros((10, 10), dtype=np.uint8), contract)
    with pytest.raises(ImageError, match="2-D gray"):
        preprocess(np.zeros((10, 10, 3), dtype=np.float32), contract)


def test_clahe_contrast_spreads_a_flat_film_and_stays_in_range():
    """A washed-out film (values 0.40–0.50) comes out of a CLAHE contract with far more contrast,
    still in [0, 1]; the same contract without it leaves the range alone."""
    rng = np.random.default_rng(0)
    flat = (0.40 + 0.10 * rng.random((200, 160))).astype(np.float32)
    plain = InputContract(height=64, width=64, channels=1, normalization="unit")
    equalised = plain.model_copy(update={"contrast": "clahe"})
    before, after = preprocess(flat, plain), preprocess(flat, equalised)
    assert np.ptp(after) > 3 * np.ptp(before)
    assert after.min() >= 0.0 and after.max() <= 1.0 and after.dtype == np.float32


def test_a_contract_without_a_contrast_step_means_none():
    """Manifests written before the contrast step existed load unchanged."""
    stored = {"height": 32, "width": 32, "channels": 1, "normalization": "unit"}
    contract = InputContract.model_validate(stored)
    assert contract.contrast == "none"
