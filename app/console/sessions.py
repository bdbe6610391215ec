"""The console's sign-in: the admin token exchanged for a session cookie, CSRF tokens, and a throttle on wrong tokens.

A session is a signed cookie, not a row: every replica verifies it with the same key, derived from the gateway's
secret key and the admin token, so rotating either ends every session. It holds when it was issued and when it was
last used; a request more than `IDLE_S` after the last use (or `MAX_AGE_S` after the sign-in) is signed out, and
every request signed in renews the cookie (a sliding idle expiry). The cookie is HttpOnly, SameSite=Strict, scoped
to the console's path, and Secure when the request came over TLS (directly or through a proxy that says so).

CSRF: every form carries a token the server derived from the session (HMAC), checked on every POST; the sign-in
form, which has no session yet, derives its token from a random pre-session cookie the same way (a signed
double-submit). Wrong admin tokens are throttled per client address: after `MAX_FAILURES` within `WINDOW_S`, the
sign-in answers 429 until the window has passed (per process: a replica counts its own).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections import deque
from dataclasses import dataclass

from app.core.clock import Clock
from app.core.security import constant_time_equals

COOKIE = "gw_console"
PRE_COOKIE = "gw_console_pre"  # the sign-in form's own CSRF secret, before there is a session
PATH = "/admin/ui"
IDLE_S = 30 * 60
MAX_AGE_S = 12 * 3600
MAX_FAILURES = 5
WINDOW_S = 5 * 60


@dataclass(frozen=True)
class Session:
    sid: str
    issued: int
    seen: int


class SessionCodec:
    """Signs and checks session cookies and CSRF tokens with one key (derived from the secret key and the token)."""

    def __init__(self, secret_key: str, admin_token: str, clock: Clock) -> None:
        material = hashlib.sha256(admin_token.encode()).digest()
        self._key = hmac.new(secret_key.encode(), b"seedream-gateway console\0" + material, hashlib.sha256).digest()
        self._admin_token = admin_token
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock().timestamp())

    def _sign(self, purpose: str, value: str) -> str:
        mac = hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def token_is_right(self, token: str) -> bool:
        return constant_time_equals(token, self._admin_token)

    def new(self) -> Session:
        now = self._now()
        return Session(secrets.token_urlsafe(18), now, now)

    def encode(self, session: Session) -> str:
        body = base64.urlsafe_b64encode(
            json.dumps({"sid": session.sid, "iat": session.issued, "seen": session.seen}).encode()
        ).decode()
        return f"{body}.{self._sign('session', body)}"

    def decode(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, renewed (seen now); None when missing, forged, idle too long or too old."""
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._sign("session", body)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body.encode()))
            session = Session(str(data["sid"]), int(data["iat"]), int(data["seen"]))
        except (ValueError, KeyError, TypeError):
            return None
        now = self._now()
        if now - session.seen > IDLE_S or now - session.issued > MAX_AGE_S or session.seen > now + 60:
            return None
        return Session(session.sid, session.issued, now)

    def csrf(self, session: Session) -> str:
        return self._sign("csrf", session.sid)

    def sign_in_csrf(self, pre_secret: str) -> str:
        return self._sign("sign-in", pre_secret)

    @staticmethod
    def matches(given: str | None, expected: str) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Throttle:
    """Wrong admin tokens per client address in a sliding window (one process's view)."""

    def __init__(self, clock: Clock, max_failures: int = MAX_FAILURES, window_s: int = WINDOW_S) -> None:
        self._clock = clock
        self._max = max_failures
        self._window = dt.timedelta(seconds=window_s)
        self._failures: dict[str, deque[dt.datetime]] = {}

    def _recent(self, client: str) -> deque[dt.datetime]:
        now = self._clock()
        failures = self._failures.setdefault(client, deque())
        while failures and now - failures[0] > self._window:
            failures.popleft()
        if not failures:
            self._failures.pop(client, None)
        return failures

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None when it may now."""
        failures = self._recent(client)
        if len(failures) < self._max:
            return None
        return max(1, int((failures[0] + self._window - self._clock()).total_seconds()) + 1)

    def failed(self, client: str) -> None:
        self._recent(client)
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses: forget the oldest
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(client, deque()).append(self._clock())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
