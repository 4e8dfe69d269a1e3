import pytest

from cxr.core.errors import InvalidObjectKey
from cxr.core.storage import parse_uri, validate_key
from cxr.core.storage.keys import join_key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("a/./b", "'.'"),
        ("/abs/path", "absolute"),
        ("a//b", "empty path segment"),
        ("a/b/", "empty path segment"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("a\x7fb", "control character"),
        ("a\\..\\b", "backslash"),
        ("x" * 1025, "longer than"),
    ],
)
def test_invalid_keys_are_refused_with_the_rule_they_break(key, reason):
    with pytest.raises(InvalidObjectKey, match=reason):
        validate_key(key)


@pytest.mark.parametrize("key", ["a", "models/x/1/model.keras", "ünï côdé/with spaces.png", "a..b/c.d"])
def test_valid_keys_pass_unchanged(key):
    assert validate_key(key) == key


def test_join_key_validates_the_result():
    assert join_key("models", "x", "1") == "models/x/1"
    with pytest.raises(InvalidObjectKey):
        join_key("models", "..", "x")


@pytest.mark.parametrize(
    ("uri", "scheme", "bucket", "path"),
    [
        ("s3://bucket/a/b.png", "s3", "bucket", "a/b.png"),
        ("s3://bucket", "s3", "bucket", ""),
        ("file:///tmp/x%20y.png", "file", "", "/tmp/x y.png"),
    ],
)
def test_parse_uri(uri, scheme, bucket, path):
    parsed = parse_uri(uri)
    assert (parsed.scheme, parsed.bucket, parsed.path) == (scheme, bucket, path)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("http://example.org/a.png", "unsupported URI scheme 'http'"),
        ("gopher://x", "unsupported URI scheme"),
        ("/no/scheme.png", "unsupported URI scheme '\\(none\\)'"),
        ("s3:///key-without-bucket", "no bucket"),
        ("s3://bucket/../escape", "'..'"),
        ("file://host/path", "names a host"),
        ("file:///a/../b", "'..'"),
        ("", "empty"),
    ],
)
def test_bad_uris_are_refused(uri, reason):
    with pytest.raises(InvalidObjectKey, match=reason):
        parse_uri(uri)
