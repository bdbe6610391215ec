"""Key material (tenant-key hashes, upstream-key encryption) and SingleFlight's sharing of one in-flight call."""

from __future__ import annotations

import asyncio

import pytest

from app.core.security import (
    TENANT_KEY_PREFIX,
    KeyMaterial,
    constant_time_equals,
    new_tenant_key,
    redact_key,
    redact_path,
)
from app.tasks.singleflight import SingleFlight

SECRET_A = "secret-a-0123456789abcdef"
SECRET_B = "secret-b-0123456789abcdef"


# --- KeyMaterial ----------------------------------------------------------------------------------------


def test_tenant_key_hash_is_deterministic_per_secret() -> None:
    key = new_tenant_key()
    digest = KeyMaterial(SECRET_A).hash_tenant_key(key)
    assert digest == KeyMaterial(SECRET_A).hash_tenant_key(key)
    assert len(digest) == 64
    int(digest, 16)  # hex
    assert key not in digest


def test_tenant_key_hash_differs_across_secrets_and_keys() -> None:
    key = new_tenant_key()
    assert KeyMaterial(SECRET_A).hash_tenant_key(key) != KeyMaterial(SECRET_B).hash_tenant_key(key)
    assert KeyMaterial(SECRET_A).hash_tenant_key(key) != KeyMaterial(SECRET_A).hash_tenant_key(key + "x")


def test_fingerprint_is_separate_from_the_tenant_hash() -> None:
    material = KeyMaterial(SECRET_A)
    assert material.fingerprint("sk-up") == KeyMaterial(SECRET_A).fingerprint("sk-up")
    assert material.fingerprint("sk-up") != material.hash_tenant_key("sk-up")
    assert material.fingerprint("sk-up") != KeyMaterial(SECRET_B).fingerprint("sk-up")


def test_encrypt_decrypt_round_trip() -> None:
    plaintext = "sk-upstream-ÄÖ-🔑-" + "z" * 100
    token = KeyMaterial(SECRET_A).encrypt(plaintext)
    assert plaintext not in token
    assert KeyMaterial(SECRET_A).decrypt(token) == plaintext


def test_encryption_is_randomised() -> None:
    material = KeyMaterial(SECRET_A)
    assert material.encrypt("sk-upstream") != material.encrypt("sk-upstream")


def test_decrypt_with_another_secret_raises_value_error() -> None:
    token = KeyMaterial(SECRET_A).encrypt("sk-upstream")
    with pytest.raises(ValueError, match="GATEWAY_SECRET_KEY"):
        KeyMaterial(SECRET_B).decrypt(token)


@pytest.mark.parametrize("token", ["", "not-a-token", "gAAAAABkZm9vYmFy"])
def test_decrypt_garbage_raises_value_error(token: str) -> None:
    with pytest.raises(ValueError):
        KeyMaterial(SECRET_A).decrypt(token)


def test_new_tenant_keys_are_prefixed_and_unique() -> None:
    keys = {new_tenant_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(key.startswith(TENANT_KEY_PREFIX) and len(key) >= len(TENANT_KEY_PREFIX) + 40 for key in keys)


def test_constant_time_equals() -> None:
    assert constant_time_equals("adm-token", "adm-token") is True
    assert constant_time_equals("adm-token", "adm-tokeN") is False
    assert constant_time_equals("adm-token", "adm-token-longer") is False


@pytest.mark.parametrize(
    "text",
    [
        "sk-gw-abc",
        "sk-org-live-abc",
        "SK-proj-x",
        "key:sk-abc",
        "pastedsk-gw-abc",
        "whsec_abc",
        "x-whsec_abc",
        "GWT_abc",
        "\u017fk-proj-x",  # a long s: IGNORECASE matches it as s, so the quick test before the regex must too
        "s\u212a-proj-x",  # the Kelvin sign, which IGNORECASE matches as k
    ],
)
def test_key_like_text_is_redacted(text: str) -> None:
    assert redact_key(text) == "[redacted]"


@pytest.mark.parametrize("text", ["task_img_0123", "ask-me", "tn_0123", "acme-corp", "upk_01"])
def test_ids_and_names_are_kept(text: str) -> None:
    assert redact_key(text) == text


def test_only_key_like_path_segments_are_redacted() -> None:
    assert redact_path("/admin/v1/keys/sk-gw-abc/rotate") == "/admin/v1/keys/[redacted]/rotate"
    assert redact_path("/admin/v1/tenants/task-force") == "/admin/v1/tenants/task-force"
    assert redact_path("/admin/v1/tenants/whsec_abc/webhook") == "/admin/v1/tenants/[redacted]/webhook"


# --- SingleFlight ---------------------------------------------------------------------------------------


class Gate:
    """An upstream call that waits until released, counting how often it ran."""

    def __init__(self, result: str = "value", error: Exception | None = None) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.finished = 0
        self.result = result
        self.error = error

    async def __call__(self) -> str:
        self.calls += 1
        await self.release.wait()
        self.finished += 1
        if self.error is not None:
            raise self.error
        return self.result


async def settle() -> None:
    """Let every ready task run up to its next await (no wall-clock sleeping)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_call() -> None:
    flight: SingleFlight[str] = SingleFlight()
    gate = Gate("shared")
    waiters = [asyncio.create_task(flight.do("k", gate)) for _ in range(100)]
    await settle()
    assert gate.calls == 1
    assert len(flight) == 1

    gate.release.set()
    results = await asyncio.gather(*waiters)

    assert results == ["shared"] * 100
    assert gate.calls == 1
    assert len(flight) == 0


async def test_different_keys_do_not_share() -> None:
    flight: SingleFlight[str] = SingleFlight()
    a, b = Gate("a"), Gate("b")
    waiters = [asyncio.create_task(flight.do("a", a)), asyncio.create_task(flight.do("b", b))]
    await settle()
    assert len(flight) == 2
    a.release.set()
    b.release.set()
    assert await asyncio.gather(*waiters) == ["a", "b"]
    assert (a.calls, b.calls) == (1, 1)


async def test_a_finished_call_is_not_reused() -> None:
    flight: SingleFlight[str] = SingleFlight()
    gate = Gate("fresh")
    gate.release.set()
    assert await flight.do("k", gate) == "fresh"
    assert await flight.do("k", gate) == "fresh"
    assert gate.calls == 2


async def test_an_exception_reaches_every_waiter_and_the_next_call_runs_again() -> None:
    flight: SingleFlight[str] = SingleFlight()
    boom = RuntimeError("upstream down")
    failing = Gate(error=boom)
    waiters = [asyncio.create_task(flight.do("k", failing)) for _ in range(10)]
    await settle()
    failing.release.set()

    outcomes = await asyncio.gather(*waiters, return_exceptions=True)

    assert outcomes == [boom] * 10
    assert failing.calls == 1
    assert len(flight) == 0

    healthy = Gate("recovered")
    healthy.release.set()
    assert await flight.do("k", healthy) == "recovered"
    assert healthy.calls == 1


async def test_cancelling_one_waiter_does_not_cancel_the_shared_call() -> None:
    flight: SingleFlight[str] = SingleFlight()
    gate = Gate("survived")
    leaving = asyncio.create_task(flight.do("k", gate))
    staying = asyncio.create_task(flight.do("k", gate))
    await settle()

    leaving.cancel()
    await settle()
    assert leaving.cancelled()
    assert len(flight) == 1  # still in flight

    gate.release.set()
    assert await staying == "survived"
    assert (gate.calls, gate.finished) == (1, 1)


async def test_a_call_whose_only_waiter_left_keeps_running_and_can_be_joined() -> None:
    flight: SingleFlight[str] = SingleFlight()
    gate = Gate("late")
    leaving = asyncio.create_task(flight.do("k", gate))
    await settle()
    leaving.cancel()
    await settle()
    assert leaving.cancelled()

    joining = asyncio.create_task(flight.do("k", gate))
    await settle()
    gate.release.set()

    assert await joining == "late"
    assert gate.calls == 1
    assert len(flight) == 0
