"""Walking an archive lazily: a local folder, an ``s3://bucket/prefix``, a list file of URIs, or
a PACS over DICOMweb (``dicomweb://host:port/path?filters``, QIDO-RS: ``cxr.core.dicomweb``).

The walk yields one ``WalkItem`` at a time in a deterministic order (sorted names, S3 key order),
so an archive of millions of images is never held in memory and a re-run after a crash cuts the
same chunks. The scheduler never reads image bytes: hashing and de-duplication happen in the
worker, which reads the bytes anyway.

Items the walk itself must refuse (a symlink that leaves the archive, a symlink loop, a list
line with an unknown scheme) come out with a ``problem`` and become failure rows; they are never
silently dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr.core.dicomweb import is_dicomweb, parse_source, walk_instances
from cxr.core.errors import InvalidObjectKey, PermanentError
from cxr.core.imaging.formats import is_image_name
from cxr.core.settings import Settings
from cxr.core.storage import open_store, parse_uri


@dataclass(frozen=True)
class WalkItem:
    uri: str
    problem: str | None = None  # set when the walk refuses the item; it becomes a failure row


def normalise_source(source: str) -> str:
    """A stable identity for a source (absolute file URI, the S3 URI, the DICOMweb URI with its
    filters sorted), used to resume jobs."""
    if is_dicomweb(source):
        return parse_source(source).uri
    if source.startswith("s3://"):
        parse_uri(source)
        return source.rstrip("/")
    if source.startswith("file://"):
        return Path(parse_uri(source).path).resolve().as_uri()
    path = Path(source).expanduser()
    if not path.exists():
        raise PermanentError(f"source {source!r} does not exist (expected a folder, a list file or s3://)")
    if path.is_file() and not _is_image_file(path):
        _check_list_file(path)  # refused here, before any job row exists
    return path.resolve().as_uri()


#: The first bytes of the image formats the decoder reads (DICOM's mark sits at offset 128).
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def _is_image_file(path: Path) -> bool:
    """A single file given as the source is scored as a one-image archive when its first bytes
    say it is an image; anything else must be a list file."""
    try:
        with path.open("rb") as stream:
            head = stream.read(132)
    except OSError:
        return False
    return head.startswith(_IMAGE_MAGIC) or head[128:132] == b"DICM" or head[8:12] == b"WEBP"


def _check_list_file(path: Path) -> None:
    try:
        with path.open("rb") as stream:
            stream.read(1 << 16).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PermanentError(
            f"{path} is neither an image nor a list file (UTF-8 text, one image path or URI per line)"
        ) from exc
    except OSError as exc:
        raise PermanentError(f"cannot read list file {path}: {exc.strerror or exc}") from exc


def walk(source: str, settings: Settings) -> Iterator[WalkItem]:
    """Every image reference under ``source`` (already normalised), lazily."""
    if is_dicomweb(source):
        yield from (WalkItem(uri) for uri in walk_instances(parse_source(source), settings))
        return
    if source.startswith("s3://"):
        yield from _walk_s3(source, settings)
        return
    path = Path(parse_uri(source).path)
    if path.is_dir():
        yield from _walk_folder(path, path.resolve())
    elif _is_image_file(path):
        yield WalkItem(path.as_uri())
    else:
        yield from _walk_list_file(path)


def _walk_s3(source: str, settings: Settings) -> Iterator[WalkItem]:
    parsed = parse_uri(source)
    store = open_store(f"s3://{parsed.bucket}", settings)
    prefix = parsed.path
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # s3://bucket/archive means the folder 'archive/', not 'archive-old/'
    for info in store.list(prefix):
        if is_image_name(info.key.rsplit("/", 1)[-1]):
            yield WalkItem(f"s3://{parsed.bucket}/{info.key}")


def _walk_folder(directory: Path, root: Path) -> Iterator[WalkItem]:
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        yield WalkItem(directory.as_uri(), f"cannot list folder: {exc.strerror or exc}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_symlink():
            problem = _symlink_problem(path, root)
            if problem is not None:
                yield WalkItem(path.as_uri(), problem)
                continue
            if path.is_dir():
                yield WalkItem(path.as_uri(), "symlinked folder not followed (it could loop)")
                continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_folder(path, root)
        elif is_image_name(entry.name):
            yield WalkItem(path.as_uri())


def _symlink_problem(path: Path, root: Path) -> str | None:
    try:
        target = path.resolve(strict=True)
    except (RuntimeError, OSError) as exc:  # Python < 3.13 raises RuntimeError on loops
        return f"broken symlink or symlink loop ({exc})"
    if target != root and root not in target.parents:
        return "symlink points outside the archive root"
    return None


def _walk_list_file(path: Path) -> Iterator[WalkItem]:
    """One URI (s3://, file://) or path per line; blank lines and '#' comments are ignored;
    relative paths are relative to the list file's folder."""
    try:
        stream = path.open(encoding="utf-8")
    except OSError as exc:
        raise PermanentError(f"cannot read list file {path}: {exc.strerror or exc}") from exc
    with stream:
        for raw in stream:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "://" in line:
                try:
                    parse_uri(line)
                except InvalidObjectKey as exc:
                    yield WalkItem(line, str(exc))
                    continue
                yield WalkItem(line)
            else:
                yield _list_file_path(path.parent / line)


def _list_file_path(path: Path) -> WalkItem:
    """A relative or absolute path from a list file, resolved; a symlink loop is a problem of
    that line, not the end of the walk (``resolve`` raises on loops)."""
    try:
        return WalkItem(path.resolve().as_uri())
    except (RuntimeError, OSError) as exc:
        return WalkItem(path.absolute().as_uri(), f"broken symlink or symlink loop ({exc})")
