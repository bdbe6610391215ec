"""Key material: tenant keys as keyed hashes, upstream keys encrypted at rest, constant-time comparison."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TENANT_KEY_PREFIX = "sk-gw-"
TOKEN_PREFIX = "gwt_"  # an end user's short-lived token (app/tenants/tokens.py)
MAX_TOKEN_CHARS = 4096  # far beyond the largest token the gateway signs: nothing bigger is decoded or hashed
WEBHOOK_SECRET_PREFIX = "whsec_"  # a webhook signing secret (app/webhooks/signing.py)
REDACTED = "[redacted]"
# A secret, as an operator or a caller may type it where an id belongs: a key, the gateway's (`sk-gw-`) or the
# upstream's (`sk-...`), a webhook signing secret (`whsec_`) or an end-user token (`gwt_`): `sk-` opening a word, or
# any of the prefixes anywhere.
_KEY_LIKE = re.compile(
    rf"(?<![A-Za-z0-9])sk-|{re.escape(TENANT_KEY_PREFIX)}|{re.escape(WEBHOOK_SECRET_PREFIX)}|{re.escape(TOKEN_PREFIX)}",
    re.IGNORECASE,
)
# What every match of _KEY_LIKE contains (case-folded): text holding none of them cannot match, and is told so by a
# few substring tests instead of the regex (about 0.2 µs against 3 µs: the access line redacts every request's path).
_KEY_MARKERS = ("sk-", WEBHOOK_SECRET_PREFIX, TOKEN_PREFIX)  # the tenant key's prefix begins with "sk-"


def _looks_keyed(text: str) -> bool:
    """_KEY_LIKE.search(text), with the regex run only on text that holds one of the markers."""
    lowered = text.casefold()  # as IGNORECASE compares: the long s and the Kelvin sign fold to s and k
    for marker in _KEY_MARKERS:
        if marker in lowered:
            return _KEY_LIKE.search(text) is not None
    return False


class KeyMaterial:
    """Derives separate keys for hashing and encryption from GATEWAY_SECRET_KEY.

    Previous secret keys (GATEWAY_PREVIOUS_SECRET_KEYS) still verify tenant keys and decrypt upstream keys, so the
    secret can be rotated without invalidating anything: new hashes and ciphertexts use the current secret, and
    each stored value records the id of the secret that made it (`key_id`) so it can be re-keyed.
    """

    def __init__(self, secret_key: str, previous: Sequence[str] = ()) -> None:
        secrets_in_order = [secret_key, *[p for p in previous if p and p != secret_key]]
        # Each hash key's HMAC with its key already absorbed: a copy per hash instead of a new HMAC (once per request).
        self._hash_keys = [
            (_key_id(s), hmac.new(_derive(s, b"seedream-gateway tenant-key-hash"), digestmod=hashlib.sha256))
            for s in secrets_in_order
        ]
        self._fernets = [
            Fernet(base64.urlsafe_b64encode(_derive(s, b"seedream-gateway upstream-key-enc"))) for s in secrets_in_order
        ]
        self._multi = MultiFernet(self._fernets)
        self._fernet_ids = [_key_id(s) for s in secrets_in_order]
        self._token_keys = [
            hmac.new(_derive(s, b"seedream-gateway end-user-token"), digestmod=hashlib.sha256) for s in secrets_in_order
        ]
        self.key_id = self._hash_keys[0][0]
        # Links the gateway signs (kept result images, app/results/service.py): a key of their own.
        self._link_keys = [
            hmac.new(_derive(s, b"seedream-gateway link-signing"), digestmod=hashlib.sha256) for s in secrets_in_order
        ]

    def sign_link(self, message: str) -> str:
        """A link's signature under the current secret (HMAC-SHA256, hex)."""
        return _hmac(self._link_keys[0], message.encode())

    def link_signature_ok(self, message: str, signature: str) -> bool:
        """Whether `signature` signs `message` under any known secret (a rotation keeps handed-out links working)."""
        given = signature.encode()
        return any(hmac.compare_digest(_hmac(k, message.encode()).encode(), given) for k in self._link_keys)

    def sign_token(self, body: bytes) -> str:
        """An end-user token: `body` (its encoded claims) signed under the current secret, as
        `gwt_<body>.<signature>` (both base64url): verified in memory, with no database read."""
        signed = TOKEN_PREFIX + _b64encode(body)
        return signed + "." + _b64encode(_mac(self._token_keys[0], signed.encode()))

    def token_body(self, token: str) -> bytes | None:
        """The claims of a token signed under any known secret (a rotation keeps tokens working until they
        expire); None for anything else."""
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(TOKEN_PREFIX):
            return None
        signed, dot, signature = token.rpartition(".")
        if not dot:
            return None
        try:
            given = _b64decode(signature)
            body = _b64decode(signed[len(TOKEN_PREFIX) :])
        except ValueError:
            return None
        message = signed.encode()
        if not any(hmac.compare_digest(_mac(k, message), given) for k in self._token_keys):
            return None
        return body

    def hash_tenant_key(self, key: str) -> str:
        """The key's hash under the current secret."""
        return _hmac(self._hash_keys[0][1], key.encode())

    def tenant_key_hashes(self, key: str) -> list[tuple[str, str]]:
        """(secret id, hash) under every known secret, the current one first: a stored hash may be any of them."""
        return [(key_id, _hmac(hash_key, key.encode())) for key_id, hash_key in self._hash_keys]

    def fingerprint(self, upstream_key: str) -> str:
        """An upstream key's fingerprint under the current secret (to find it again without decrypting)."""
        return _hmac(self._hash_keys[0][1], b"upstream:" + upstream_key.encode())

    def fingerprints(self, upstream_key: str) -> list[str]:
        """Its fingerprint under every known secret, the current one first."""
        return [_hmac(hash_key, b"upstream:" + upstream_key.encode()) for _, hash_key in self._hash_keys]

    def encrypt(self, plaintext: str) -> str:
        """Encrypted with the current secret."""
        return self._fernets[0].encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """Decrypted with whichever known secret encrypted it."""
        try:
            return self._multi.decrypt(token.encode()).decode()
        except InvalidToken as e:
            raise ValueError("cannot decrypt: was GATEWAY_SECRET_KEY changed?") from e

    def reencrypt(self, token: str) -> str:
        """The same plaintext encrypted with the current secret (MultiFernet.rotate)."""
        try:
            return self._multi.rotate(token.encode()).decode()
        except InvalidToken as e:
            raise ValueError("cannot decrypt: was GATEWAY_SECRET_KEY changed?") from e


def _key_id(secret_key: str) -> str:
    """A short public id of a secret (not reversible; tells which secret made a stored value)."""
    return hashlib.sha256(b"seedream-gateway key-id:" + secret_key.encode()).hexdigest()[:12]


def _hmac(prepared: hmac.HMAC, message: bytes) -> str:
    """HMAC-SHA256 of `message` (hex) under the key `prepared` was made with."""
    mac = prepared.copy()
    mac.update(message)
    return mac.hexdigest()


def _mac(prepared: hmac.HMAC, message: bytes) -> bytes:
    """HMAC-SHA256 of `message` (raw bytes) under the key `prepared` was made with."""
    mac = prepared.copy()
    mac.update(message)
    return mac.digest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64decode(text: str) -> bytes:
    """base64url without padding, as `_b64encode` writes it; ValueError for anything else (one spelling per value)."""
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(secret_key: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret_key.encode())


def redact_key(text: str) -> str:
    """`text`, or "[redacted]" when it looks like a secret (a key, a webhook signing secret): the one rule for what
    an operator or a caller typed where an id belongs, before it is stored (the audit log) or written (access
    lines)."""
    return REDACTED if _looks_keyed(text) else text


def redact_path(path: str) -> str:
    """`path` with every segment that looks like a secret key redacted (`redact_key`)."""
    if not _looks_keyed(path):
        return path
    return "/".join(redact_key(segment) for segment in path.split("/"))


def new_tenant_key() -> str:
    return TENANT_KEY_PREFIX + secrets.token_urlsafe(32)


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
