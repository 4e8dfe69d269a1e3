"""A corpus of the files a hospital archive really holds, each with what must become of it.

``build_corpus`` writes every case into a folder (plus the walk-level oddities: symlink loops,
links out of the archive, a FIFO) and returns the expectations; ``write_list_file`` turns the same
corpus into a list file with the URI-level oddities (``..`` keys, unknown schemes) added. The
expectations say the outcome, the stage and a reason substring, so a test can check that every
file is either scored or refused *for the right reason*, not merely refused.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from PIL import Image
from sqlalchemy import select

from cxr.core.db.models import Failure, JobImage
from cxr.core.db.session import session_scope
from cxr.core.settings import Settings
from scheduler.summary import job_summary
from tests.dicom_files import make_dicom, malformed_voi_lut_dicom
from tests.worker_support import synthetic_png


@dataclass(frozen=True)
class Case:
    """What must happen to one file: ``scored``, or ``failed`` at ``stage`` with ``reason`` in
    its message."""

    name: str
    outcome: str
    stage: str = ""
    reason: str = ""


def _pixels(seed: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size[1])[None, :] * np.linspace(0.3, 1, size[0])[:, None]
    return np.clip(ramp * 200 + rng.normal(0, 20, size), 0, 255).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` × ``height``: a decompression bomb by header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _exif_rotated_jpeg() -> bytes:
    image = Image.fromarray(_pixels(11, (48, 80)), mode="L")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return _save(image, "JPEG", exif=exif.tobytes())


def _palette_with_alpha() -> bytes:
    image = Image.fromarray(_pixels(12, (64, 64)), mode="L").convert("P")
    image.info["transparency"] = 0
    return _save(image, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_pixels(seed, (64, 64)), mode="L").convert("P") for seed in (13, 14, 15)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _multipage_tiff() -> bytes:
    pages = [Image.fromarray(_pixels(seed, (64, 64)), mode="L") for seed in (16, 17)]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _sixteen_bit_png() -> bytes:
    array = (_pixels(18, (64, 64)).astype(np.uint16) * 257).astype(np.uint16)
    return _save(Image.fromarray(array), "PNG")  # mode I;16


def _jpeg_ls_dicom() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")).read_bytes()


def _dicom_files() -> dict[str, bytes]:
    pixels = (_pixels(19, (64, 64)).astype(np.uint16) * 16).astype(np.uint16)
    return {
        "no-pixels.dcm": make_dicom(pixels, with_pixels=False),
        "monochrome1.dcm": make_dicom(pixels, photometric="MONOCHROME1"),
        "lateral.dcm": make_dicom(pixels, view="LL"),
        "jpeg-ls.dcm": _jpeg_ls_dicom(),
        # A VOI LUT of two entries that cannot map 12-bit values: the decoder must fall back.
        "bogus-voi.dcm": make_dicom(pixels, voi_lut=np.array([0, 0])),
        "malformed-voi-lut.dcm": malformed_voi_lut_dicom(pixels),
        "garbage-after-preamble.dcm": b"\x00" * 128 + b"DICM" + b"\xff\x13garbage" * 20,
    }


def _image_files() -> dict[str, bytes]:
    good = _save(Image.fromarray(_pixels(20, (64, 64)), mode="L"), "JPEG")
    png = synthetic_png(21, (64, 64))
    rgb = np.stack([_pixels(22, (64, 64)), _pixels(23, (64, 64)), _pixels(24, (64, 64))], axis=-1)
    return {
        "zero-bytes.png": b"",
        "truncated.jpg": good[: len(good) // 2],
        "truncated.png": png[: len(png) // 2],
        "text.png": b"this is a text file, not an image\n" * 10,
        "page.png": b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n",
        "one-pixel.png": _save(Image.new("L", (1, 1), 128), "PNG"),
        "bomb-header.png": _png_claiming(50_000, 50_000),
        "sixteen-bit.png": _sixteen_bit_png(),
        "cmyk.jpg": _save(Image.fromarray(rgb, mode="RGB").convert("CMYK"), "JPEG"),
        "palette-alpha.png": _palette_with_alpha(),
        "exif-rotated.jpg": _exif_rotated_jpeg(),
        "animated.gif": _animated_gif(),
        "multipage.tiff": _multipage_tiff(),
        "image.webp": _save(Image.fromarray(_pixels(25, (64, 64)), mode="L"), "WEBP"),
        "colour.png": _save(Image.fromarray(rgb, mode="RGB"), "PNG"),
        "röntgen thorax ünïcode.png": synthetic_png(26, (64, 64)),
        "duplicate-of-colour.png": _save(Image.fromarray(rgb, mode="RGB"), "PNG"),
    }


#: Expectations for the files written by ``build_corpus`` (stage, reason substring).
FILE_CASES = [
    Case("zero-bytes.png", "failed", "decode", "empty file"),
    Case("truncated.jpg", "failed", "decode", "truncated"),
    Case("truncated.png", "failed", "decode", "truncated"),
    Case("text.png", "failed", "decode", "not a recognised image"),
    Case("page.png", "failed", "decode", "not a recognised image"),
    Case("one-pixel.png", "failed", "decode", "below the 32-pixel minimum"),
    Case("bomb-header.png", "failed", "decode", "decompression bomb"),
    Case("sixteen-bit.png", "scored"),
    Case("cmyk.jpg", "scored"),
    Case("palette-alpha.png", "scored"),
    Case("exif-rotated.jpg", "scored"),
    Case("animated.gif", "failed", "decode", "holds 3 frames"),
    Case("multipage.tiff", "failed", "decode", "holds 2 frames"),
    Case("image.webp", "scored"),
    Case("colour.png", "scored"),
    Case("röntgen thorax ünïcode.png", "scored"),
    Case("duplicate-of-colour.png", "skipped", "", "same bytes"),  # as colour.png: scored once
    Case("no-pixels.dcm", "failed", "decode", "no pixel data"),
    Case("monochrome1.dcm", "scored"),
    Case("lateral.dcm", "skipped", "", "not frontal"),  # a policy decision, not a failure
    Case("jpeg-ls.dcm", "skipped", "", "DICOM modality not scored: MR"),  # pydicom's MR slice
    Case("bogus-voi.dcm", "scored"),
    Case("malformed-voi-lut.dcm", "failed", "decode", "corrupt DICOM VOI LUT"),
    Case("garbage-after-preamble.dcm", "failed", "decode", "DICOM"),
]
GOOD = ["good-1.png", "good-2.png", "good-3.png"]


def build_corpus(root: Path) -> list[Case]:
    """Write every file case, the good images and the walk-level oddities under ``root``.

    Returns the expectations of the folder walk; walk-level cases (links, FIFO) are included.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, data in {**_image_files(), **_dicom_files()}.items():
        (root / name).write_bytes(data)
    for seed, name in enumerate(GOOD):
        (root / name).write_bytes(synthetic_png(100 + seed, (64, 64)))
    outside = root.parent / "outside-the-archive"
    outside.mkdir(exist_ok=True)
    (outside / "secret.png").write_bytes(synthetic_png(200, (64, 64)))
    os.symlink(root / "loop-b.png", root / "loop-a.png")
    os.symlink(root / "loop-a.png", root / "loop-b.png")
    os.symlink(root / "does-not-exist.png", root / "dangling.png")
    os.symlink(outside / "secret.png", root / "escape.png")
    os.mkfifo(root / "fifo.png")  # never written to: opening it for reading would block forever
    walk_cases = [
        Case("loop-a.png", "failed", "walk", "symlink loop"),
        Case("loop-b.png", "failed", "walk", "symlink loop"),
        Case("dangling.png", "failed", "walk", "broken symlink"),
        Case("escape.png", "failed", "walk", "outside the archive root"),
        Case("fifo.png", "failed", "fetch", "not a regular file"),
    ]
    return [*FILE_CASES, *walk_cases, *(Case(name, "scored") for name in GOOD)]


def write_list_file(root: Path, list_path: Path) -> tuple[list[Case], dict[str, str]]:
    """A list file naming every file of the corpus (relative paths) and URI-level oddities.

    Returns the expectations and, for the URI-level lines, the URI under which each is recorded.
    """
    lines = ["# the bad-input corpus as a list file", ""]
    cases: list[Case] = []
    for case in build_corpus(root):
        lines.append(f"{root.name}/{case.name}")
        if case.name.startswith("loop-"):
            cases.append(Case(case.name, "failed", "walk", "symlink loop"))
        elif case.name == "dangling.png":  # a list line is resolved: recorded as its target
            cases.append(Case("does-not-exist.png", "failed", "fetch", "no object"))
        elif case.name == "escape.png":  # a list file names files explicitly: the link is followed
            cases.append(Case("secret.png", "scored"))
        else:
            cases.append(case)
    uri_lines = {
        "dotdot": "s3://bucket/../x.png",
        "ftp": "ftp://archive.example.org/xray.png",
        "missing": (root / "never-written.png").as_uri(),
    }
    lines.extend(uri_lines.values())
    cases += [
        Case("dotdot", "failed", "walk", "'..' segment"),
        Case("ftp", "failed", "walk", "unsupported URI scheme 'ftp'"),
        Case("missing", "failed", "fetch", "no object"),
    ]
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cases, uri_lines


def job_outcomes(settings: Settings, job_id: str) -> dict[str, tuple[str, str, str]]:
    """uri → (outcome, stage, reason) for every image of the job (a skip's reason, no stage)."""
    with session_scope(settings) as session:
        failures = {f.image_uri: f for f in session.scalars(select(Failure).where(Failure.job_id == job_id))}
        rows = session.scalars(select(JobImage).where(JobImage.job_id == job_id)).all()
        return {
            row.uri: (
                row.outcome,
                failures[row.uri].stage if row.uri in failures else "",
                failures[row.uri].reason if row.uri in failures else (row.reason or ""),
            )
            for row in rows
        }


def _key(uri: str, uri_lines: dict[str, str]) -> str:
    """The case name of a recorded URI: its file name, or the name of a URI-level line."""
    for name, line in uri_lines.items():
        if uri == line:
            return name
    return unquote(uri).rsplit("/", 1)[-1]


def check_job(settings: Settings, job_id: str, cases: list[Case], uri_lines: dict[str, str]) -> None:
    """Every case recorded once with its outcome, stage and reason; the counters add up."""
    recorded = {_key(uri, uri_lines): outcome for uri, outcome in job_outcomes(settings, job_id).items()}
    assert sorted(recorded) == sorted(case.name for case in cases)
    wrong = []
    for case in cases:
        outcome, stage, reason = recorded[case.name]
        if outcome != case.outcome or stage != case.stage or case.reason not in reason:
            wrong.append(f"{case.name}: got {outcome}/{stage}/{reason!r}, want {case}")
    assert not wrong, "\n".join(wrong)
    summary = job_summary(settings, job_id)
    assert summary["status"] == "finished"
    assert summary["total"] == len(cases)
    assert summary["scored"] + summary["skipped"] + summary["failed"] == summary["total"]
    assert summary["scored"] == sum(case.outcome == "scored" for case in cases)
    assert summary["skipped"] == sum(case.outcome == "skipped" for case in cases)
