"""Decoder fuzzing in one place: the seed corpus, the mutation strategies and the oracle.

The CI test (``tests/unit/test_decode_fuzz.py``) and the longer campaign (``bench/fuzz.py``)
both import from here, so a campaign explores exactly what CI checks, only longer.

The oracle is the decoder's promise to the worker: for *any* bytes, ``decode_image`` then
``preprocess`` either return valid pixels or raise ``ImageError`` with a reason. Anything else
(a third-party exception escaping, NaN pixels, a case that takes seconds or hundreds of MiB) would
crash or stall a worker on one bad file from a hospital archive.

Seeds are built in code (no files from ``../shared``), reusing the builders of the bad-input
corpus (``tests.badinput``) and of the DICOM tests (``tests.dicom_files``).
"""

from __future__ import annotations

import functools
import re
import struct
import time
import traceback
import tracemalloc
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from PIL import Image
from pydicom.encaps import encapsulate

from cxr.core.errors import ImageError
from cxr.core.imaging import InputContract, decode_image, preprocess
from cxr.core.imaging.decode import is_dicom
from tests.badinput import _dicom_files, _image_files, _pixels, _save, _sixteen_bit_png
from tests.dicom_files import make_dicom, with_transfer_syntax

#: The production defaults (``Settings.max_image_bytes`` / ``max_image_pixels``).
LIMITS = {"max_bytes": 64 * 1024 * 1024, "max_pixels": 60_000_000}
CONTRACT = InputContract(height=64, width=64, channels=3, normalization="unit")
TIME_LIMIT_S = 2.0
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024

# ---------------------------------------------------------------------------------------------
# Seed corpus


def _gray(seed: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    return _pixels(seed, size)


def _float_tiff(values: np.ndarray) -> bytes:
    return _save(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


def image_seeds() -> dict[str, bytes]:
    """Valid files of every format Pillow decodes for us, and the bad-input corpus's files."""
    gray = Image.fromarray(_gray(1), mode="L")
    weird_floats = _gray(2).astype(np.float32) * 1e30
    weird_floats[0, :3] = (np.nan, np.inf, -np.inf)
    seeds = {
        "png8": _save(gray, "PNG"),
        "png16": _sixteen_bit_png(),
        "jpeg": _save(gray, "JPEG", quality=80),
        "jpeg-progressive": _save(gray.convert("RGB"), "JPEG", progressive=True),
        "tiff": _save(gray, "TIFF"),
        "tiff-deflate": _save(gray, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-float": _float_tiff(_gray(3) / 255.0),
        "tiff-float-nonfinite": _float_tiff(weird_floats),
        "tiff-int32": _save(Image.fromarray(_gray(4).astype(np.int32) * 70_000, mode="I"), "TIFF"),
        "webp": _save(gray, "WEBP"),
        "bmp": _save(gray, "BMP"),
    }
    seeds.update({f"badinput-{name}": data for name, data in _image_files().items() if data})
    return seeds


def dicom_seeds() -> dict[str, bytes]:
    """Valid DICOM files through every LUT path, a multi-frame one, and the bad-input ones."""
    ramp = np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (40, 1))  # 40×32, values 0..3968
    seeds = {
        "dicom-mono2": make_dicom(ramp),
        "dicom-mono1": make_dicom(ramp, photometric="MONOCHROME1"),
        "dicom-window": make_dicom(ramp, window=(2048.0, 1024.0)),
        "dicom-voi-lut": make_dicom(ramp, voi_lut=np.where(np.arange(4096) < 2048, 0, 65535)),
        "dicom-rescale": make_dicom(ramp, rescale=(2.0, -1024.0)),
        "dicom-modality-lut": make_dicom(ramp, modality_lut=np.arange(4096)[::-1]),
        "dicom-signed": make_dicom(ramp.astype(np.int16) - 2048, pixel_representation=1),
        "dicom-8bit": make_dicom((ramp // 16).astype(np.uint8), bits_allocated=8),
        "dicom-rgb": make_dicom(np.stack([ramp // 16] * 3, axis=-1).astype(np.uint8), bits_allocated=8),
        "dicom-multiframe": make_dicom(np.stack([ramp, ramp[::-1]])),
    }
    seeds.update({f"badinput-{name}": data for name, data in _dicom_files().items()})
    return seeds


@functools.cache
def seeds() -> dict[str, bytes]:
    """Every seed, built once per process (about 0.1 s)."""
    return {**image_seeds(), **dicom_seeds()}


#: Seeds that must decode to pixels unmutated (the rest are refused by design).
VALID_SEEDS = (
    *("png8", "png16", "jpeg", "jpeg-progressive", "tiff", "tiff-deflate", "tiff-float", "tiff-int32"),
    *("webp", "bmp", "dicom-mono2", "dicom-mono1", "dicom-window", "dicom-voi-lut", "dicom-rescale"),
    *("dicom-modality-lut", "dicom-signed", "dicom-8bit", "dicom-rgb"),
)

# ---------------------------------------------------------------------------------------------
# Byte-level mutations

#: Truncation is rare: it mostly cuts off the pixel data, which every decoder reports alike.
_OPS = ("flip", "flip", "replace", "replace", "interesting", "interesting", "insert", "delete", "truncate")
_INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFFFF, 0x8000, 0x7FFF, 0xFFFFFFFF, 0x80000000]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` after 1–4 bit flips, byte replacements, interesting values, insertions,
    deletions or a truncation. Positions favour the first 512 bytes, where the headers are; in
    a DICOM file they skip its 128-byte preamble and magic, since a mutation there only makes
    yet another "not a recognised image"."""
    data = bytearray(draw(base))
    start = 132 if is_dicom(bytes(data)) else 0
    for _ in range(draw(st.integers(1, 4))):
        if len(data) <= start:
            break
        limit = min(len(data), start + 512) if draw(st.booleans()) else len(data)
        pos = draw(st.integers(start, limit - 1))
        op = draw(st.sampled_from(_OPS))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "replace":
            data[pos] = draw(st.integers(0, 255))
        elif op == "interesting":
            size = draw(st.sampled_from([1, 2, 4]))
            value = draw(st.sampled_from(_INTERESTING)) & ((1 << (8 * size)) - 1)
            order = draw(st.sampled_from(["<", ">"]))
            data[pos : pos + size] = struct.pack(order + {1: "B", 2: "H", 4: "I"}[size], value)
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return bytes(data)


def seed_bytes() -> st.SearchStrategy[bytes]:
    return st.sampled_from(sorted(seeds())).map(lambda name: seeds()[name])


# ---------------------------------------------------------------------------------------------
# Structure-aware mutations: headers that lie, with their checksums fixed so the decoder reads them

_SIDES = st.one_of(st.integers(32, 70), st.sampled_from([0, 1, 31, 32, 4096, 7745, 7746, 65535, 65536]))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@st.composite
def png_with_lying_header(draw: st.DrawFn) -> bytes:
    """A seed PNG whose IHDR claims other dimensions, bit depth or colour type (CRC fixed)."""
    data = draw(st.sampled_from([seeds()["png8"], seeds()["png16"], seeds()["badinput-colour.png"]]))
    width, height, depth, colour, *rest = struct.unpack(">IIBBBBB", data[16:29])
    width = draw(st.one_of(st.just(width), _SIDES, st.integers(0, 2**32 - 1)))
    height = draw(st.one_of(st.just(height), _SIDES, st.integers(0, 2**32 - 1)))
    depth = draw(st.one_of(st.just(depth), st.sampled_from([0, 1, 2, 4, 8, 16, 32, 255])))
    colour = draw(st.one_of(st.just(colour), st.sampled_from([0, 2, 3, 4, 6, 7, 255])))
    body = struct.pack(">IIBBBBB", width, height, depth, colour, *rest)
    return data[:8] + _png_chunk(b"IHDR", body) + data[33:]


@st.composite
def jpeg_with_lying_header(draw: st.DrawFn) -> bytes:
    """A seed JPEG whose start-of-frame claims other dimensions, precision or components."""
    data = draw(st.sampled_from([seeds()["jpeg"], seeds()["jpeg-progressive"]]))
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    precision, height, width, components = struct.unpack_from(">BHHB", data, sof + 4)
    height = draw(st.one_of(st.just(height), _SIDES.filter(lambda side: side < 65536)))
    width = draw(st.one_of(st.just(width), _SIDES.filter(lambda side: side < 65536)))
    precision = draw(st.one_of(st.just(precision), st.sampled_from([0, 8, 12, 16, 255])))
    components = draw(st.one_of(st.just(components), st.sampled_from([0, 1, 2, 3, 4, 255])))
    header = struct.pack(">BHHB", precision, height, width, components)
    return data[: sof + 4] + header + data[sof + 10 :]


_US = st.one_of(
    st.sampled_from([0, 1, 2, 7, 8, 12, 15, 16, 17, 24, 31, 32, 33, 64, 65535]), st.integers(0, 65535)
)
_COMPRESSED = [
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.70",  # JPEG lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
]
_SWAPPED = [*_COMPRESSED, "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.3.4"]


@st.composite
def dicom_with_lying_header(draw: st.DrawFn) -> bytes:
    """A small DICOM through ``make_dicom`` whose header disagrees with its pixels or LUTs.

    Each attribute the decoder reads is, independently, either honest or drawn from values that
    break it: Rows/Columns/frames that need more (or fewer) bytes than PixelData holds, odd bit
    depths, a signed flag, colour samples, a photometric interpretation, a zero or negative
    window, a huge rescale, a LUT descriptor that disagrees with its data, a compressed transfer
    syntax over native pixels.
    """
    rows, cols = draw(st.integers(32, 40)), draw(st.integers(32, 40))
    if draw(st.integers(0, 7)) == 0:  # one case in eight is under the 32-pixel minimum
        rows = draw(st.integers(1, 31))
    frames = draw(st.sampled_from([1, 1, 1, 2, 3]))
    bits = draw(st.sampled_from([8, 16, 16, 32]))
    signed = draw(st.sampled_from([0, 0, 1])) if bits != 32 else 0
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    top = min(1 << bits, 1 << 12) if bits > 8 else 256
    pixels = rng.integers(0, top, size=(frames, rows, cols) if frames > 1 else (rows, cols))
    if signed:
        pixels = pixels - top // 2
    kwargs: dict[str, object] = {"bits_allocated": bits, "pixel_representation": signed}
    if draw(st.booleans()):
        kwargs["photometric"] = draw(
            st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "HSV", "X"])
        )
    if draw(st.booleans()):
        centre = draw(st.sampled_from([0.0, -1.0, 2048.0, 1e308, -1e308, 1e-300]))
        width = draw(st.sampled_from([0.0, -1.0, -4096.0, 1.0, 1024.0, 1e-300, 1e308]))
        kwargs["window"] = (centre, width)
    if draw(st.booleans()):
        size = draw(st.sampled_from([1, 2, 256, 4096]))
        kwargs["voi_lut"] = rng.integers(0, 65536, size)
        if draw(st.booleans()):
            # US or SS by PixelRepresentation (an ambiguous VR): values that fit both
            entry = st.one_of(st.sampled_from([0, 1, 2, 8, 16, 17, 256, 4096, 32767]), st.integers(0, 32767))
            kwargs["voi_descriptor"] = [draw(entry), draw(entry), draw(entry)]
    if draw(st.booleans()):
        kwargs["modality_lut"] = rng.integers(0, 65536, draw(st.sampled_from([1, 2, 4096])))
    if draw(st.booleans()):
        kwargs["rescale"] = (
            draw(st.sampled_from([0.0, -1.0, 1e-300, 1e300, 1e308, 2.0])),
            draw(st.sampled_from([0.0, -1e308, 1e308, -1024.0])),
        )
    overrides: dict[str, object] = {}
    for tag in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        if draw(st.integers(0, 5)) == 0:
            overrides[tag] = draw(_US)
    if draw(st.integers(0, 5)) == 0:
        overrides["SamplesPerPixel"] = draw(st.sampled_from([0, 1, 2, 3, 4, 65535]))
    if draw(st.integers(0, 5)) == 0:
        overrides["NumberOfFrames"] = draw(st.sampled_from([0, 1, 2, -1, 1000, 2**31 - 1]))
    compressed = draw(st.integers(0, 7)) == 0
    if compressed:
        kwargs["transfer_syntax"] = draw(st.sampled_from(_COMPRESSED))
    if draw(st.integers(0, 7)) == 0:
        raw = draw(st.binary(min_size=2, max_size=64))
        overrides["PixelData"] = encapsulate([raw]) if compressed else raw
    data = make_dicom(pixels, overrides=overrides, **kwargs)  # type: ignore[arg-type]
    if draw(st.integers(0, 7)) == 0:
        data = with_transfer_syntax(data, draw(st.sampled_from(_SWAPPED)))
    return data


def fuzz_inputs() -> st.SearchStrategy[bytes]:
    """All inputs: a seed or a lying header, then (or not) byte-level mutations on top."""
    structured = st.one_of(png_with_lying_header(), jpeg_with_lying_header(), dicom_with_lying_header())
    return st.one_of(mutated(seed_bytes()), structured, mutated(structured))


# ---------------------------------------------------------------------------------------------
# The oracle


@dataclass(frozen=True)
class Outcome:
    """What one input became: ``pixels``, ``refused`` (ImageError) or ``crash`` (anything else,
    including pixels that break the contract)."""

    kind: str
    reason: str
    seconds: float
    peak_bytes: int
    error: BaseException | None = None

    @property
    def reason_prefix(self) -> str:
        """The reason without its figures, to count outcomes by kind ("corrupt DICOM VOI LUT")."""
        return re.sub(r"\d+", "N", self.reason.split(":")[0])[:80]

    @property
    def crash_site(self) -> str:
        """``Type at module.function``, from the innermost frame: one key per distinct crash."""
        if self.error is None:
            return self.reason_prefix
        frame = traceback.extract_tb(self.error.__traceback__)[-1]
        module = frame.filename.rsplit("site-packages/", 1)[-1].removesuffix(".py").replace("/", ".")
        return f"{type(self.error).__name__} at {module}.{frame.name}"


def _contract_violation(pixels: np.ndarray, model_input: np.ndarray) -> str:
    if pixels.dtype != np.float32 or pixels.ndim != 2:
        return f"decoded pixels are {pixels.dtype} {pixels.shape}, not float32 2-D"
    if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        return "decoded pixels are not finite values in [0, 1]"
    if model_input.shape != CONTRACT.shape or not np.isfinite(model_input).all():
        return f"model input is {model_input.shape} or not finite"
    return ""


def run_case(data: bytes) -> Outcome:
    """Decode and preprocess ``data``, timing it and measuring the peak of memory traced by
    tracemalloc, which includes NumPy's arrays (Pillow's own buffers are not traced; the
    decoder's pixel limits bound those). Tracing runs for this case only: left on, it would
    trace Hypothesis's own allocations too and make every case five times slower. (Under
    ``python -X tracemalloc`` it is already on: then only its peak is reset.)"""
    already_tracing = tracemalloc.is_tracing()
    if already_tracing:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    started = time.perf_counter()
    kind, reason, error = "pixels", "", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every oddity it tolerates
            pixels = decode_image(data, **LIMITS).pixels
            reason = _contract_violation(pixels, preprocess(pixels, CONTRACT))
        if reason:
            kind = "crash"
    except ImageError as exc:
        kind, reason = "refused", str(exc)
    except Exception as exc:  # the oracle's whole point: anything else is a crash
        kind, reason, error = "crash", f"{type(exc).__name__}: {exc}", exc
    finally:
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        if not already_tracing:
            tracemalloc.stop()
    return Outcome(kind, reason, seconds, peak, error)


def check(data: bytes) -> Outcome:
    """``run_case`` with the oracle asserted (for tests): no crash, in time, in memory."""
    outcome = run_case(data)
    if outcome.kind == "crash":
        raise AssertionError(f"decoder crash on {len(data)} bytes: {outcome.reason}") from outcome.error
    assert outcome.seconds < TIME_LIMIT_S, f"took {outcome.seconds:.2f} s ({outcome.reason or 'pixels'})"
    assert outcome.peak_bytes < MEMORY_LIMIT_BYTES, f"peak {outcome.peak_bytes >> 20} MiB"
    return outcome
