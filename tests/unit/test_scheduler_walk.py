"""Walking archives: what is an image, what is refused, and in which order."""

from __future__ import annotations

import os

import pytest

from cxr.core.errors import PermanentError
from cxr.core.imaging.formats import is_image_name
from cxr.core.settings import Settings
from scheduler.sources import WalkItem, normalise_source, walk


def items(source: str, tmp_path) -> list[WalkItem]:
    return list(walk(normalise_source(source), Settings(data_dir=tmp_path / "d")))


def test_folder_walk_is_recursive_sorted_and_skips_non_images(tmp_path):
    root = tmp_path / "archive"
    (root / "b" / "deep").mkdir(parents=True)
    for name in (
        "z.png",
        "a.jpg",
        "notes.txt",
        ".hidden.png",
        "b/deep/c.dcm",
        "b/1.2.840.113619.2",
        "b/x.JPEG",
    ):
        (root / name).write_bytes(b"x")
    uris = [item.uri for item in items(str(root), tmp_path)]
    expected = ["a.jpg", "b/1.2.840.113619.2", "b/deep/c.dcm", "b/x.JPEG", "z.png"]
    assert uris == [(root / name).as_uri() for name in expected]


def test_symlinks_out_of_the_root_loops_and_folders_become_problems(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    (root / "ok.png").write_bytes(b"x")
    os.symlink(outside, root / "escape.png")
    os.symlink(root / "loop.png", root / "loop.png")
    os.symlink(root / "ok.png", root / "inside-link.png")
    (root / "sub").mkdir()
    os.symlink(root / "sub", root / "sublink")
    found = {item.uri.rsplit("/", 1)[-1]: item.problem for item in items(str(root), tmp_path)}
    assert found["ok.png"] is None and found["inside-link.png"] is None
    assert found["escape.png"] == "symlink points outside the archive root"
    assert "loop" in found["loop.png"]
    assert "not followed" in found["sublink"]


def test_list_file_of_paths_and_uris(tmp_path):
    (tmp_path / "img.png").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# archive export\nimg.png\n\ns3://bucket/a/b.png\nftp://host/x.png\ns3://bucket/../x\n"
    )
    found = items(str(listing), tmp_path)
    assert [i.uri for i in found] == [
        (tmp_path / "img.png").as_uri(), "s3://bucket/a/b.png", "ftp://host/x.png", "s3://bucket/../x",
    ]  # fmt: skip
    assert [i.problem is None for i in found] == [True, True, False, False]
    assert "unsupported URI scheme 'ftp'" in found[2].problem


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(PermanentError, match="does not exist"):
        normalise_source(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", True),
        ("a.PNG", True),
        ("README", True),
        ("a.csv", False),
        (".DS_Store", False),
        ("1.2.3", True),
    ],
)
def test_candidates(name, expected):
    assert is_image_name(name) is expected


def test_a_symlink_loop_in_a_list_file_fails_that_line_not_the_walk(tmp_path):
    os.symlink(tmp_path / "b.png", tmp_path / "a.png")
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    (tmp_path / "ok.png").write_bytes(b"x")
    (tmp_path / "list.txt").write_text("a.png\nok.png\n")
    found = items(str(tmp_path / "list.txt"), tmp_path)
    assert [item.uri for item in found] == [(tmp_path / "a.png").as_uri(), (tmp_path / "ok.png").as_uri()]
    assert "symlink loop" in found[0].problem and found[1].problem is None


def test_a_single_image_file_is_a_one_image_archive(tmp_path):
    from tests.worker_support import synthetic_png

    film = tmp_path / "one film.png"
    film.write_bytes(synthetic_png(0))
    source = normalise_source(str(film))
    assert list(walk(source, Settings(data_dir=tmp_path))) == [WalkItem(film.as_uri())]


def test_a_binary_file_that_is_no_image_is_refused_before_any_job(tmp_path):
    junk = tmp_path / "archive.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(PermanentError, match="neither an image nor a list file"):
        normalise_source(str(junk))
