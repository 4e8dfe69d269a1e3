"""The behaviour every ObjectStore backend must show; run against local and S3."""

from __future__ import annotations

import io
import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest

from cxr.core.errors import InvalidObjectKey, ObjectNotFound
from cxr.core.storage import ObjectStore


def check_store_contract(store: ObjectStore) -> None:
    uri = store.put("a/b/one.bin", b"1" * 10)
    assert uri == store.uri("a/b/one.bin")
    assert store.get("a/b/one.bin") == b"1" * 10

    big = bytes(range(256)) * 20_000  # 5 MB, streamed in and out
    store.put("a/big.bin", io.BytesIO(big))
    with store.open("a/big.bin") as stream:
        first = stream.read(1000)
        rest = stream.read()
    assert first + rest == big

    assert store.exists("a/b/one.bin")
    assert not store.exists("a/b/missing.bin")
    with pytest.raises(ObjectNotFound):
        store.get("a/b/missing.bin")

    store.put("a/b/one.bin", b"overwritten")
    assert store.get("a/b/one.bin") == b"overwritten"

    for i in range(5):
        store.put(f"list/item-{i}.txt", str(i).encode())
    store.put("listing-elsewhere.txt", b"x")
    listing = store.list("list/")
    assert not isinstance(listing, list | tuple)  # a lazy iterator, not a materialised list
    first_two = list(itertools.islice(listing, 2))
    assert len(first_two) == 2
    keys = sorted(info.key for info in store.list("list/"))
    assert keys == [f"list/item-{i}.txt" for i in range(5)]
    assert {info.size for info in store.list("list/")} == {1}

    assert store.put_if_absent("claims/1", b"first") is True
    assert store.put_if_absent("claims/1", b"second") is False
    assert store.get("claims/1") == b"first"
    with ThreadPoolExecutor(8) as pool:
        winners = list(pool.map(lambda i: store.put_if_absent("claims/race", str(i).encode()), range(8)))
    assert winners.count(True) == 1

    store.delete("a/b/one.bin")
    assert not store.exists("a/b/one.bin")
    store.delete("a/b/one.bin")  # deleting twice is fine

    for bad in ("../escape", "/abs", "a//b", "a/\x00"):
        with pytest.raises(InvalidObjectKey):
            store.put(bad, b"x")
        with pytest.raises(InvalidObjectKey):
            store.get(bad)
