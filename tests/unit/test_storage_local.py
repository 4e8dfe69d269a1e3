import os

import pytest

from cxr.core.errors import InvalidObjectKey, ObjectNotFound, PermanentError
from cxr.core.storage import LocalStore, open_store, read_uri
from tests.store_contract import check_store_contract


def test_local_store_contract(tmp_path):
    check_store_contract(LocalStore(tmp_path / "objects"))


def test_open_store_builds_local_backend_from_file_url(tmp_path):
    store = open_store((tmp_path / "objs").as_uri())
    uri = store.put("x/y.txt", b"hello")
    assert uri == (tmp_path / "objs" / "x" / "y.txt").as_uri()
    assert read_uri(uri) == b"hello"


def test_symlink_out_of_the_root_is_refused_and_not_listed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    store = LocalStore(tmp_path / "root")
    store.put("inside.txt", b"ok")
    os.symlink(outside, tmp_path / "root" / "link")
    with pytest.raises(InvalidObjectKey, match="outside the store root"):
        store.get("link/secret.txt")
    assert [info.key for info in store.list()] == ["inside.txt"]


def test_reading_never_creates_directories(tmp_path):
    store = LocalStore(tmp_path / "not-yet")
    assert not store.exists("a.txt")
    assert list(store.list()) == []
    assert not (tmp_path / "not-yet").exists()


def test_a_fifo_is_refused_at_once_instead_of_blocking_the_reader(tmp_path):
    store = LocalStore(tmp_path / "root")
    store.put("ok.png", b"ok")
    os.mkfifo(tmp_path / "root" / "pipe.png")  # nobody writes: a plain open() would wait forever
    with pytest.raises(PermanentError, match="not a regular file"):
        store.get("pipe.png")
    (tmp_path / "root" / "folder.png").mkdir()
    with pytest.raises(ObjectNotFound):  # a folder is still "no such object", as before
        store.get("folder.png")
