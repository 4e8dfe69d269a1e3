"""The web front door's session, CSRF and redirect rules, without a server."""

from __future__ import annotations

import pytest

from cxr.web.auth import Authenticator, same_origin
from cxr.web.pages import display_uri, safe_next


def test_sessions_are_signed_expire_and_die_with_the_token():
    auth = Authenticator("s3cret-token", session_seconds=60)
    cookie = auth.new_session(now=1000)
    assert "s3cret-token" not in cookie
    session = auth.session(cookie, now=1030)
    assert session is not None and session.expires == 1060
    assert auth.session(cookie, now=1061) is None  # expired
    expires, nonce, signature = cookie.split(".")
    assert auth.session(f"{int(expires) + 3600}.{nonce}.{signature}", now=1030) is None  # extended
    assert auth.session(f"{expires}.other.{signature}", now=1030) is None
    assert auth.session("garbage", now=1030) is None and auth.session(None) is None
    assert Authenticator("another-token", 60).session(cookie, now=1030) is None


def test_csrf_tokens_belong_to_one_session():
    auth = Authenticator("s3cret-token", session_seconds=60)
    first, second = (auth.session(auth.new_session(now=0), now=1) for _ in range(2))
    assert first and second
    assert auth.csrf_ok(first, auth.csrf_token(first))
    assert not auth.csrf_ok(first, auth.csrf_token(second))
    assert not auth.csrf_ok(first, "") and not auth.csrf_ok(first, None)


def test_bearer_tokens():
    auth = Authenticator("s3cret-token", session_seconds=60)
    assert auth.bearer_ok("Bearer s3cret-token") and auth.bearer_ok("bearer s3cret-token")
    for wrong in (None, "", "s3cret-token", "Basic s3cret-token", "Bearer s3cret", "Bearer s3cret-token2"):
        assert not auth.bearer_ok(wrong)
    with pytest.raises(ValueError):
        Authenticator("", 60)


def test_origin_and_redirect_rules():
    assert same_origin(None, "127.0.0.1:8080", "http")
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080", "http")
    assert not same_origin("null", "127.0.0.1:8080", "http")
    assert not same_origin("https://evil.example", "127.0.0.1:8080", "http")
    assert safe_next("/jobs/abc") == "/jobs/abc"
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "", None):
        assert safe_next(target) == "/"


def test_file_uris_read_as_paths():
    assert display_uri("file:///a/%3Cimg%20src%3Dx%3E.png") == "/a/<img src=x>.png"
    assert display_uri("s3://bucket/key%20x") == "s3://bucket/key%20x"
