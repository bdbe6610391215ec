"""End-user tokens' signature and claims (app/core/security.py, app/tenants/tokens.py): signed and verified in memory,
tampering refused, a previous GATEWAY_SECRET_KEY still verifies, and a token is redacted wherever a key would be."""

from __future__ import annotations

from app.core.security import KeyMaterial, redact_key
from app.tenants.tokens import EndUser, TokenClaims, VerifiedTokens, issued_after, unix_ms
from tests.fixtures.clock import FakeClock

SECRET = "secret-for-token-tests-0123456789abcdef"


def claims(**changes: object) -> TokenClaims:
    values: dict[str, object] = {
        "tenant_id": "ten_1",
        "key_id": "key_1",
        "end_user": EndUser("alice", images_per_day=5, submits_per_minute=2, origins=frozenset({"https://a.example"})),
        "scopes": frozenset({"submit", "read"}),
        "issued_at_ms": 1_790_000_000_123,
        "expires_at": 1_790_000_900,
    }
    values.update(changes)
    return TokenClaims(**values)  # type: ignore[arg-type]


def test_a_token_carries_its_claims_signed() -> None:
    keys = KeyMaterial(SECRET)
    made = claims()
    token = keys.sign_token(made.encode())
    assert token.startswith("gwt_") and "." in token
    assert TokenClaims.decode(keys.token_body(token) or b"") == made
    bare = claims(end_user=EndUser("bob"))
    assert TokenClaims.decode(keys.token_body(keys.sign_token(bare.encode())) or b"") == bare


def test_anything_else_is_not_a_token() -> None:
    keys = KeyMaterial(SECRET)
    token = keys.sign_token(claims().encode())
    body, signature = token.rsplit(".", 1)
    for forged in (
        body + "." + signature[::-1],
        body[:-2] + "xy." + signature,
        body,
        "gwt_." + signature,
        "sk-gw-" + token[4:],
        token + "=",
        token.replace("gwt_", "gwt_é"),
        "gwt_" + "A" * 5000,
    ):
        assert keys.token_body(forged) is None, forged
    assert KeyMaterial("another-secret-0123456789abcdef").token_body(token) is None
    assert TokenClaims.decode(b'{"t": 1}') is None and TokenClaims.decode(b"not json") is None


def test_a_previous_secret_still_verifies_and_the_current_one_signs() -> None:
    old = KeyMaterial(SECRET)
    token = old.sign_token(claims().encode())
    rotated = KeyMaterial("the-new-secret-0123456789abcdef", [SECRET])
    assert rotated.token_body(token) is not None
    assert old.token_body(rotated.sign_token(claims().encode())) is None


def test_verified_tokens_are_kept_and_bounded() -> None:
    keys = KeyMaterial(SECRET)
    verified = VerifiedTokens(keys, size=2)
    tokens = [keys.sign_token(claims(key_id=f"key_{i}").encode()) for i in range(3)]
    assert [verified.claims(t).key_id for t in tokens] == ["key_0", "key_1", "key_2"]  # type: ignore[union-attr]
    assert verified.claims("gwt_nope.nope") is None
    assert len(verified._claims) == 2


def test_revocation_refuses_what_was_issued_up_to_its_moment() -> None:
    clock = FakeClock()
    made = claims(issued_at_ms=unix_ms(clock.now()))
    assert issued_after(made, None)
    assert not issued_after(made, clock.now())  # the same millisecond: refused
    clock.advance(0.002)
    assert not issued_after(made, clock.now())
    assert issued_after(claims(issued_at_ms=unix_ms(clock.now()) + 1), clock.now())


def test_a_token_is_redacted_where_a_key_would_be() -> None:
    token = KeyMaterial(SECRET).sign_token(claims().encode())
    assert redact_key(token) == "[redacted]"
    assert redact_key("task_img_0123") == "task_img_0123"
