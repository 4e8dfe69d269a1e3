"""A full-resolution archive: hospital-sized films in the formats a real archive holds.

    python -m bench.corpus --out /tmp/cxr-fullres --per-format 8

The development films are already shrunk (at most 384–511 px); real archives hold 2,000–3,000 px
films. This writes each source film, upscaled to a hospital size with film-grain noise added (so
a JPEG or PNG compresses like a real film, not like a smooth upscale), in every format below, and
a ``manifest.csv`` (path, format, label, height, width). Sources are the development films of
``../shared`` when present, else synthetic chest-like films, so the corpus builds anywhere.

The encoders (``FORMATS``) are also what the fast-vs-slow decode tests write their films with.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_FILMS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-dev"
SAMPLE_FILMS = Path(__file__).resolve().parents[1] / "samples" / "cxr-sample"

#: A common portable-detector size (rows × columns).
FILM_SIZE = (2500, 2048)


def synthetic_film(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A chest-like float32 film in [0, 1]: bright mediastinum and edges, two dark lung fields,
    rib-like stripes and grain. Not a radiograph; it has a radiograph's value spread and texture."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    film = 0.75 - 0.25 * np.exp(-(((x - 0.5) / 0.45) ** 2)) * (y > 0.1)
    for centre in (0.3, 0.7):
        lung = np.exp(-(((x - centre) / 0.13) ** 2 + ((y - 0.5) / 0.25) ** 2))
        film -= 0.45 * lung
    film += 0.05 * np.sin(y * rng.uniform(60, 90)) * (film < 0.6)
    film += rng.normal(0, 0.02, (height, width)).astype(np.float32)
    return np.clip(film, 0, 1).astype(np.float32)


def upscale(pixels: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A small film brought to ``height``×``width`` (bicubic), with fine grain added so the big
    film is not unrealistically smooth."""
    big = Image.fromarray(np.ascontiguousarray(pixels, np.float32), "F").resize(
        (width, height), Image.Resampling.BICUBIC
    )
    grain = rng.normal(0, 0.01, (height, width)).astype(np.float32)
    return np.clip(np.asarray(big, np.float32) + grain, 0, 1)


# ---- encoders: float32 [0, 1] film → file bytes -------------------------------------------------
def jpeg_bytes(film: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(film * 255).astype(np.uint8), "L").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png16_bytes(film: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(film * 65535).astype(np.uint16)).save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def tiff16_bytes(film: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(film * 65535).astype(np.uint16)).save(buffer, "TIFF")
    return buffer.getvalue()


def dicom_bytes(
    film: np.ndarray,
    *,
    monochrome1: bool = False,
    voi_lut: bool = False,
    transfer_syntax: str | None = None,
) -> bytes:
    """A 12-bit (stored in 16) DX film: rescale slope/intercept and a window, or a VOI LUT
    sequence (a gamma curve, as vendors ship); MONOCHROME1 stores bone dark."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    stored = np.round(film * 4095).astype(np.uint16)
    if monochrome1:
        stored = 4095 - stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0 if voi_lut else -1024.0
    if voi_lut:
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]  # entries, first value mapped, bits per entry
        curve = (np.linspace(0, 1, 4096) ** 0.7 * 65535).astype(np.uint16)
        item.LUTData = curve.tobytes()
        ds.VOILUTSequence = DicomSequence([item])
    else:
        ds.WindowCenter, ds.WindowWidth = 1024.0, 3600.0
    ds.PixelData = stored.tobytes()
    if transfer_syntax is not None:
        ds.compress(transfer_syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


#: Corpus format → (encoder, file extension).
FORMATS: dict[str, tuple[Callable[[np.ndarray], bytes], str]] = {
    "jpeg8": (jpeg_bytes, "jpg"),
    "png16": (png16_bytes, "png"),
    "tiff16": (tiff16_bytes, "tif"),
    "dicom12": (dicom_bytes, "dcm"),
    "dicom12-mono1": (lambda film: dicom_bytes(film, monochrome1=True), "dcm"),
    "dicom12-voilut": (lambda film: dicom_bytes(film, voi_lut=True), "dcm"),
}


def _compressed_formats() -> dict[str, tuple[Callable[[np.ndarray], bytes], str]]:
    """DICOM JPEG-LS and JPEG 2000 (lossless), where an encoder for each is installed."""
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    out: dict[str, tuple[Callable[[np.ndarray], bytes], str]] = {}
    # JPEG Lossless SV1 has no encoder in pydicom (tests/dicom_codecs.py writes one in Python,
    # far too slow for 5 million pixels a film): the corpus holds JPEG-LS and JPEG 2000.
    for name, syntax in (("dicom-jpegls", JPEGLSLossless), ("dicom-j2k", JPEG2000Lossless)):
        try:
            if get_encoder(syntax).is_available:
                out[name] = (lambda film, s=syntax: dicom_bytes(film, transfer_syntax=s), "dcm")
        except (ImportError, NotImplementedError, ValueError, AttributeError):
            continue
    return out


def all_formats() -> dict[str, tuple[Callable[[np.ndarray], bytes], str]]:
    """``FORMATS`` plus the compressed DICOM syntaxes this machine can write."""
    try:
        return {**FORMATS, **_compressed_formats()}
    except ImportError:
        return dict(FORMATS)


def source_films(count: int, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """(label, float32 film at ``FILM_SIZE``): development films (shared, else the shipped sample)
    upscaled, else synthetic films."""
    from cxr.core.imaging import decode_image

    rng = np.random.default_rng(seed)
    root = SHARED_FILMS if (SHARED_FILMS / "manifest.csv").exists() else SAMPLE_FILMS
    rows: list[dict[str, str]] = []
    if (root / "manifest.csv").exists():
        with (root / "manifest.csv").open() as stream:
            rows = list(csv.DictReader(stream))
        rng.shuffle(rows)  # type: ignore[arg-type]
    for i in range(count):
        height, width = (FILM_SIZE if i % 2 == 0 else (2048, 2500)) if i % 4 < 2 else (3000, 2400)
        if rows:
            row = rows[i % len(rows)]
            data = (root / row["path"]).read_bytes()
            small = decode_image(data, max_bytes=1 << 26, max_pixels=60_000_000).pixels
            yield row.get("label", "unknown"), upscale(small, height, width, rng)
        else:
            yield "unknown", synthetic_film(rng, height, width)


def write_corpus(out: Path, per_format: int, seed: int = 0, formats: list[str] | None = None) -> Path:
    """Write ``per_format`` films in each format under ``out``; returns the manifest's path."""
    encoders = all_formats()
    chosen = formats or list(encoders)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "format", "label", "height", "width", "bytes"])
        for i, (label, film) in enumerate(source_films(per_format, seed)):
            for name in chosen:
                encode, extension = encoders[name]
                data = encode(film)
                path = Path(name) / f"film{i:04d}.{extension}"
                (out / path).parent.mkdir(parents=True, exist_ok=True)
                (out / path).write_bytes(data)
                writer.writerow([path.as_posix(), name, label, film.shape[0], film.shape[1], len(data)])
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-format", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", nargs="*", help=f"default: all of {sorted(all_formats())}")
    args = parser.parse_args(argv)
    manifest = write_corpus(args.out, args.per_format, args.seed, args.formats)
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
