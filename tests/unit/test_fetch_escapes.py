"""The worker's fetcher is where archive URIs meet storage: no URI may read outside its root."""

from __future__ import annotations

import os

import pytest

from cxr.core.errors import InvalidObjectKey, PermanentError
from cxr.core.settings import Settings
from cxr.core.storage.fetch import ObjectFetcher


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://bucket/../etc/passwd", "'..' segment"),
        ("s3://bucket/a/../../x.png", "'..' segment"),
        ("file:///tmp/../etc/passwd", "'..' segment"),
        ("file://host/etc/passwd", "names a host"),
        ("ftp://host/x.png", "unsupported URI scheme"),
        ("/etc/passwd", "unsupported URI scheme"),
    ],
)
def test_uris_that_could_escape_are_refused_before_any_read(uri, reason, tmp_path):
    with pytest.raises(InvalidObjectKey, match=reason):
        ObjectFetcher(Settings(data_dir=tmp_path)).fetch(uri)


def test_symlinks_in_a_file_uri_cannot_lead_outside_or_loop(tmp_path):
    """A file URI naming a link to another folder, or a link loop: refused, not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "root" / "loop", tmp_path / "root" / "loop")
    os.symlink(outside / "secret.png", tmp_path / "root" / "escape.png")
    fetcher = ObjectFetcher(Settings(data_dir=tmp_path / "d"))
    with pytest.raises(InvalidObjectKey, match="outside the store root"):
        fetcher.fetch((tmp_path / "root" / "escape.png").as_uri())
    with pytest.raises(PermanentError, match=r"symlink loop|cannot open"):
        fetcher.fetch((tmp_path / "root" / "loop").as_uri())
