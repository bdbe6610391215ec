"""The upstream's signature scheme (contract section 6), exactly.

`X-ToAPIs-Webhook-Signature: v1=<hex>[,v1=<previous>]`, each HMAC-SHA256 keyed with a signing secret (its UTF-8
bytes) over `id + "." + timestamp + "." + raw_body`. During a rotation the previous secret signs too, so a
receiver that still knows only the old secret keeps verifying until it is updated.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from app.core.security import WEBHOOK_SECRET_PREFIX

SECRET_PREFIX = WEBHOOK_SECRET_PREFIX  # recognisable: the audit log and the access lines redact what carries it
SECRET_BYTES = 32
HEADER_ID = "X-ToAPIs-Webhook-Id"
HEADER_TIMESTAMP = "X-ToAPIs-Webhook-Timestamp"
HEADER_SIGNATURE = "X-ToAPIs-Webhook-Signature"


def new_secret() -> str:
    """A new signing secret: 32 random bytes, URL-safe base64, with a recognisable prefix."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    message = event_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(signing_secrets: Sequence[str], event_id: str, timestamp: int, body: bytes) -> str:
    """`v1=<hex>` per secret, the current one first."""
    return ",".join(f"v1={signature(s, event_id, timestamp, body)}" for s in signing_secrets)


def headers(signing_secrets: Sequence[str], event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    out = {HEADER_ID: event_id, HEADER_TIMESTAMP: str(timestamp), "Content-Type": "application/json"}
    if signing_secrets:
        out[HEADER_SIGNATURE] = signature_header(signing_secrets, event_id, timestamp, body)
    return out
