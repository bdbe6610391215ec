"""Key material: tenant keys as keyed hashes, upstream keys encrypted at rest, constant-time comparison."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TENANT_KEY_PREFIX = "sk-gw-"


class KeyMaterial:
    """Derives separate keys for hashing and encryption from GATEWAY_SECRET_KEY."""

    def __init__(self, secret_key: str) -> None:
        self._hash_key = _derive(secret_key, b"seedream-gateway tenant-key-hash")
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret_key, b"seedream-gateway upstream-key-enc")))

    def hash_tenant_key(self, key: str) -> str:
        return hmac.new(self._hash_key, key.encode(), hashlib.sha256).hexdigest()

    def fingerprint(self, upstream_key: str) -> str:
        return hmac.new(self._hash_key, b"upstream:" + upstream_key.encode(), hashlib.sha256).hexdigest()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as e:
            raise ValueError("cannot decrypt: was GATEWAY_SECRET_KEY changed?") from e


def _derive(secret_key: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret_key.encode())


def new_tenant_key() -> str:
    return TENANT_KEY_PREFIX + secrets.token_urlsafe(32)


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
