"""Object store backed by a local directory (the embedded default)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cxr.core.errors import InvalidObjectKey, ObjectNotFound, PermanentError
from cxr.core.storage.base import ObjectInfo, ObjectStore

_TMP_PREFIX = ".cxr-tmp-"
_COPY_BLOCK = 1024 * 1024


class LocalStore(ObjectStore):
    """Keys map to files under ``root``. Writes go to a temporary file that is then renamed
    (or hard-linked, for ``put_if_absent``) into place, so readers never see partial files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()  # created on first write, never by a read
        self._real_root = self.root.resolve()
        self.root_uri = self.root.as_uri()

    def path_of(self, key: str) -> Path:
        """The file behind a key, refusing any path that resolves outside the root (symlinks)."""
        path = self.root / key
        try:
            real = path.resolve()
        except (RuntimeError, OSError) as exc:  # Python < 3.13 raises RuntimeError on a loop
            raise PermanentError(f"object key {key!r} is a symlink loop") from exc
        if real != self._real_root and self._real_root not in real.parents:
            raise InvalidObjectKey(f"object key {key!r} resolves outside the store root")
        return path

    def _write_temp(self, path: Path, data: bytes | BinaryIO) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, bytes | bytearray | memoryview):
                    out.write(data)
                else:
                    while block := data.read(_COPY_BLOCK):
                        out.write(block)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Path(tmp)

    def _put(self, key: str, data: bytes | BinaryIO, content_type: str | None) -> None:
        path = self.path_of(key)
        os.replace(self._write_temp(path, data), path)

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        path = self.path_of(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _get(self, key: str) -> bytes:
        with self._open(key) as stream:
            return stream.read()

    def _open(self, key: str) -> BinaryIO:
        """Open a regular file only. ``O_NONBLOCK`` keeps a FIFO (or a device) in an archive from
        blocking the reader forever; it has no effect on regular files."""
        try:
            fd = os.open(self.path_of(key), os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key!r} in {self.root_uri}") from exc
        except PermissionError as exc:
            raise PermanentError(f"cannot read {key!r} in {self.root_uri}: permission denied") from exc
        except OSError as exc:  # a symlink loop (ELOOP), a name too long, ...
            raise PermanentError(f"cannot open {key!r} in {self.root_uri}: {exc.strerror or exc}") from exc
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise ObjectNotFound(f"no object {key!r} in {self.root_uri}")
            raise PermanentError(f"{key!r} in {self.root_uri} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def _exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        start_dir = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        yield from (info for info in self._walk(start_dir) if info.key.startswith(prefix))

    def _walk(self, directory: Path) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(_TMP_PREFIX) or entry.is_symlink():
                continue  # half-written files and links (which could point outside) are not objects
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                key = Path(entry.path).relative_to(self.root).as_posix()
                yield ObjectInfo(key=key, size=entry.stat(follow_symlinks=False).st_size)

    def _delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(key).unlink()
