"""Who may use the web front door: one shared secret (``CXR_WEB_TOKEN``).

The API takes it as ``Authorization: Bearer <token>``. The pages take it once through a login
form and then carry a signed session cookie (HttpOnly, SameSite=Strict): a stateless value
``expiry.nonce.signature`` signed with a key derived from the token, so changing the token ends
every session and the server keeps no session table. Forms that change something carry a CSRF
token derived from the session (and a cross-site ``Origin`` is refused outright), so a page on
another site can neither read nor forge them.

Nothing here logs the token, a cookie or a CSRF value.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

SESSION_COOKIE = "cxr_session"


def _digest(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Session:
    """A verified page session."""

    nonce: str
    expires: int


class Authenticator:
    """Checks bearer tokens, issues and verifies session cookies and CSRF tokens."""

    def __init__(self, token: str, session_seconds: float) -> None:
        if not token:
            raise ValueError("the web token must not be empty")
        self._token = token.encode()
        # Keys derived from the token: a cookie never contains the token itself.
        self._session_key = hashlib.sha256(b"cxr-web-session\0" + self._token).digest()
        self._csrf_key = hashlib.sha256(b"cxr-web-csrf\0" + self._token).digest()
        self.session_seconds = int(session_seconds)

    def token_ok(self, candidate: str | None) -> bool:
        """Constant-time comparison with the configured token."""
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self._token)

    def bearer_ok(self, authorization: str | None) -> bool:
        """``Authorization: Bearer <token>`` carries the right token."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def new_session(self, now: float | None = None) -> str:
        """A fresh cookie value for a successful login."""
        expires = int((now or time.time()) + self.session_seconds)
        nonce = secrets.token_urlsafe(18)
        return f"{expires}.{nonce}.{_digest(self._session_key, f'{expires}.{nonce}')}"

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie proves, or None (missing, forged, or expired)."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        expires, nonce, signature = parts
        if not hmac.compare_digest(signature, _digest(self._session_key, f"{expires}.{nonce}")):
            return None
        if int(expires) < (now or time.time()):
            return None
        return Session(nonce=nonce, expires=int(expires))

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of a session's forms (bound to the session, so not replayable across)."""
        return _digest(self._csrf_key, session.nonce)

    def csrf_ok(self, session: Session, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(str(candidate), self.csrf_token(session))


def same_origin(origin: str | None, host: str | None, scheme: str) -> bool:
    """A state-changing request is accepted only from this site: a browser sends ``Origin`` on
    every cross-site POST, so one naming another site (or ``null``) is refused. A missing header
    (an old browser, a non-browser client) passes; the CSRF token still guards forms."""
    if origin is None:
        return True
    return host is not None and origin in (f"{scheme}://{host}", f"http://{host}", f"https://{host}")
