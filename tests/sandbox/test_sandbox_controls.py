"""The sandbox's controls and protections: hold/release, keys never echoed, the control token, capability file
URLs, and the image count of sequential generation. All on the injected clock: nothing waits on wall time."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.sandbox import SandboxConfig, create_sandbox_app
from app.sandbox.app import CONTROL_TOKEN_HEADER, is_loopback
from app.sandbox.config import key_fingerprint
from app.sandbox.state import SandboxState
from tests.sandbox.support import GEN, KEY, T0, FakeClock, client_for, create, make_config, png_bytes, poll, urls_of

REMOTE = ("10.0.0.5", 1234)
CONTROL_TOKEN = "ctl-token-for-tests-0123456789"


async def status_of(client: httpx.AsyncClient, task_id: str) -> tuple[str, int]:
    task = await poll(client, task_id)
    return task["status"], task["progress"]


# --- hold and release -----------------------------------------------------------------------------------------


async def test_hold_freezes_tasks_and_release_resumes_where_they_stood(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    running = await create(client)  # queued 2 s, terminal at 10 s
    clock.advance(5)
    before = await status_of(client, running["id"])
    assert before[0] == "in_progress"

    held = await client.post("/_control/hold")
    assert held.status_code == 200 and held.json()["hold"] is True
    assert (await client.get("/_control/config")).json()["hold"] is True
    newcomer = await create(client)
    clock.advance(10_000)  # far beyond any task's end: nothing moves while held
    assert await status_of(client, running["id"]) == before
    assert await status_of(client, newcomer["id"]) == ("queued", 0)

    released = await client.post("/_control/release")
    assert released.status_code == 200 and released.json()["hold"] is False
    # As if the held period had not passed: the running task needs its remaining 5 s, the newcomer all 10 s.
    assert await status_of(client, running["id"]) == before
    clock.advance(5)
    done = await poll(client, running["id"])
    assert done["status"] == "completed"
    assert done["completed_at"] == int(T0) + 10  # on the task clock, which skipped the hold
    assert (await status_of(client, newcomer["id"]))[0] == "in_progress"
    clock.advance(5)
    assert (await status_of(client, newcomer["id"]))[0] == "completed"


async def test_hold_keeps_even_zero_second_tasks_open(app: FastAPI, client: httpx.AsyncClient) -> None:
    assert (await client.patch("/_control/config", json={"task_seconds": 0})).status_code == 200
    await client.post("/_control/hold")
    task = await create(client)
    assert await status_of(client, task["id"]) == ("queued", 0)
    state: SandboxState = app.state.sandbox
    url = f"/files/{state.capability('file', task['id'], '0')}/{task['id']}/0.png"
    assert (await client.get(url)).status_code == 404
    await client.post("/_control/release")
    assert await status_of(client, task["id"]) == ("completed", 100)
    assert (await client.get(url)).status_code == 200


async def test_hold_and_release_are_idempotent(client: httpx.AsyncClient, clock: FakeClock) -> None:
    task = await create(client)
    await client.post("/_control/hold")
    clock.advance(100)
    await client.post("/_control/hold")  # does not restart the hold: the 100 s stay held
    clock.advance(100)
    await client.post("/_control/release")
    await client.post("/_control/release")  # a second release changes nothing
    assert await status_of(client, task["id"]) == ("queued", 0)
    clock.advance(10)
    assert (await status_of(client, task["id"]))[0] == "completed"


async def test_hold_is_a_setting_too(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_HOLD", "true")
    assert SandboxConfig().hold is True
    held_app = create_sandbox_app(make_config(hold=True), clock=clock)
    async with client_for(held_app) as held:
        task = await create(held)
        clock.advance(60)
        assert await status_of(held, task["id"]) == ("queued", 0)
        # A GET answer PATCHed back (as the e2e harness restores a config) is accepted and restores the hold.
        snapshot = (await held.get("/_control/config")).json()
        assert (await held.patch("/_control/config", json={"hold": False})).json()["hold"] is False
        clock.advance(10)
        assert (await status_of(held, task["id"]))[0] == "completed"
        assert (await held.patch("/_control/config", json=snapshot)).json()["hold"] is True
        # Reset forgets tasks, not the hold.
        await held.post("/_control/reset")
        fresh = await create(held)
        clock.advance(60)
        assert await status_of(held, fresh["id"]) == ("queued", 0)


# --- keys are never echoed ------------------------------------------------------------------------------------


async def test_control_never_echoes_keys(clock: FakeClock) -> None:
    accepted = ["sk-secret-accepted-one", "sk-secret-accepted-two"]
    stranger = "sk-secret-stranger-key"
    app = create_sandbox_app(make_config(accepted_keys=",".join(accepted), control_token=CONTROL_TOKEN), clock=clock)
    async with client_for(app, key=accepted[0]) as client:
        task = await create(client)
        await poll(client, task["id"])
        async with client_for(app, key=stranger) as other:
            assert (await other.post(GEN, json={"prompt": "x"})).status_code == 401
        answers = [
            await client.get("/_control/config"),
            await client.get("/_control/stats"),
            await client.patch("/_control/config", json={"seed": 3}),
        ]
        assert all(a.status_code == 200 for a in answers)
        for secret in [*accepted, stranger, CONTROL_TOKEN]:
            assert all(secret not in a.text for a in answers), secret
            assert secret not in repr(app.state.sandbox.config), secret

        config, stats, _ = (a.json() for a in answers)
        assert config["accepted_key_fingerprints"] == sorted(key_fingerprint(k) for k in accepted)
        assert config["control_token_set"] is True
        assert stats["by_key"] == {key_fingerprint(accepted[0]): {"create": 1, "status": 1}}
        assert stats["unauthorized"] == 1
        assert re.fullmatch(r"[0-9a-f]{8}", key_fingerprint(stranger))

        # Keys stay settable (write-only); the answer shows the new fingerprint, not the key.
        changed = await client.patch("/_control/config", json={"accepted_keys": "sk-secret-new-key"})
        assert "sk-secret-new-key" not in changed.text
        assert changed.json()["accepted_key_fingerprints"] == [key_fingerprint("sk-secret-new-key")]
        assert (await client.post(GEN, json={"prompt": "x"})).status_code == 401
        # The token is the lock: it is set at start-up only.
        refused = await client.patch("/_control/config", json={"control_token": "mine-now"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "control_token"


# --- who may use the control routes ---------------------------------------------------------------------------

CONTROL_CALLS = [
    ("GET", "/_control/stats", None),
    ("GET", "/_control/config", None),
    ("PATCH", "/_control/config", {"seed": 1}),
    ("POST", "/_control/hold", None),
    ("POST", "/_control/release", None),
    ("POST", "/_control/reset", None),
]


async def control_codes(client: httpx.AsyncClient, **headers: str) -> list[int]:
    return [
        (await client.request(method, path, json=body, headers=headers)).status_code
        for method, path, body in CONTROL_CALLS
    ]


@pytest.mark.parametrize("address", [("127.0.0.1", 5000), ("127.8.9.10", 5000), ("::1", 5000)])
async def test_loopback_needs_no_control_token(clock: FakeClock, address: tuple[str, int]) -> None:
    app = create_sandbox_app(make_config(control_token=CONTROL_TOKEN), clock=clock)
    async with client_for(app, key=None, client=address) as local:
        assert await control_codes(local) == [200] * len(CONTROL_CALLS)


async def test_remote_control_needs_the_token(clock: FakeClock) -> None:
    app = create_sandbox_app(make_config(control_token=CONTROL_TOKEN), clock=clock)
    forbidden = [403] * len(CONTROL_CALLS)
    async with client_for(app, key=None, client=REMOTE) as remote:
        r = await remote.get("/_control/stats")
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden" and r.json()["error"]["type"] == "permission_error"
        assert set(r.json()["error"]) == {"code", "message", "type"}
        assert await control_codes(remote) == forbidden
        assert await control_codes(remote, Authorization="Bearer wrong-token") == forbidden
        assert await control_codes(remote, **{CONTROL_TOKEN_HEADER: CONTROL_TOKEN[:-1]}) == forbidden
        assert await control_codes(remote, Authorization=f"Basic {CONTROL_TOKEN}") == forbidden
        assert await control_codes(remote, Authorization=f"Bearer {CONTROL_TOKEN}") == [200] * len(CONTROL_CALLS)
        assert await control_codes(remote, **{CONTROL_TOKEN_HEADER: CONTROL_TOKEN}) == [200] * len(CONTROL_CALLS)
    # The upstream API itself is for everyone with a key, wherever they call from.
    async with client_for(app, client=REMOTE) as remote_caller:
        await create(remote_caller)


async def test_without_a_configured_token_remote_control_is_closed(clock: FakeClock) -> None:
    app = create_sandbox_app(make_config(control_token=""), clock=clock)
    async with client_for(app, key=None, client=REMOTE) as remote:
        assert await control_codes(remote) == [403] * len(CONTROL_CALLS)
        assert await control_codes(remote, Authorization="Bearer ") == [403] * len(CONTROL_CALLS)
        assert await control_codes(remote, **{CONTROL_TOKEN_HEADER: ""}) == [403] * len(CONTROL_CALLS)


async def test_control_under_a_gateway_mount_is_closed_to_remote_clients(clock: FakeClock) -> None:
    gateway = FastAPI()
    gateway.mount("/_sandbox", create_sandbox_app(make_config(), clock=clock))
    async with client_for(gateway, key=None, client=REMOTE) as remote:
        assert (await remote.get("/_sandbox/_control/stats")).status_code == 403
    async with client_for(gateway, key=None) as local:
        assert (await local.get("/_sandbox/_control/stats")).status_code == 200


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("::ffff:10.0.0.5", False),
        ("localhost", False),  # a name, not an address: nothing proves it local
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, expected: bool) -> None:
    assert is_loopback(host) is expected


# --- capability URLs of files ---------------------------------------------------------------------------------


def forge(url: str) -> str:
    """The URL with one character of its token (the one all-hex path segment) changed."""
    match = re.search(r"/([0-9a-f]{32})/", url)
    assert match, url
    token = match.group(1)
    flipped = ("0" if token[0] != "0" else "1") + token[1:]
    return url.replace(f"/{token}/", f"/{flipped}/")


async def test_result_urls_are_capabilities(app: FastAPI, client: httpx.AsyncClient, clock: FakeClock) -> None:
    first, second = await create(client, n=2), await create(client, n=2)
    clock.advance(10)
    urls = urls_of(await poll(client, first["id"]))
    other_urls = urls_of(await poll(client, second["id"]))
    for url in urls:
        match = re.search(r"/files/([0-9a-f]{32})/(img_[0-9a-f]{32})/(\d+)\.png$", url)
        assert match and match.group(2) == first["id"], url
        assert (await client.get(url)).status_code == 200
    # Open to whoever holds the URL, with no key at all (like the upstream's CDN URLs).
    async with client_for(app, key=None, client=REMOTE) as anyone:
        assert (await anyone.get(urls[0])).status_code == 200
        forged = [
            forge(urls[0]),
            urls[0].replace("/0.png", "/1.png"),  # image 0's token does not open image 1
            other_urls[0].replace(second["id"], first["id"]),  # nor another task's token this task
            f"/files/{first['id']}/0.png",  # the old, enumerable form
            f"/files/{'0' * 32}/{first['id']}/0.png",
        ]
        for url in forged:
            r = await anyone.get(url)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", url
    # The secret is per process (per app): another sandbox does not honour these URLs.
    other_app = create_sandbox_app(make_config(), clock=clock)
    other_state: SandboxState = other_app.state.sandbox
    other_state.tasks.update(app.state.sandbox.tasks)
    async with client_for(other_app) as elsewhere:
        assert (await elsewhere.get(urls[0])).status_code == 404


async def test_upload_urls_are_capabilities(app: FastAPI, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/uploads/images", files={"file": ("a.png", png_bytes(), "image/png")})
    url = r.json()["data"]["url"]
    match = re.search(r"/uploads/([0-9a-f]{32})/(upload_[0-9a-f]+\.png)$", url)
    assert match, url
    async with client_for(app, key=None, client=REMOTE) as anyone:
        assert (await anyone.get(url)).content == png_bytes()
        for forged in (forge(url), f"/uploads/{match.group(2)}", f"/uploads/{'0' * 32}/{match.group(2)}"):
            assert (await anyone.get(forged)).status_code == 404, forged


# --- how many images a task returns ---------------------------------------------------------------------------


def sequential(mode: str | None, max_images: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if mode is not None:
        meta["sequential_image_generation"] = mode
    if max_images is not None:
        meta["sequential_image_generation_options"] = {"max_images": max_images}
    return {"metadata": meta} if meta else {}


@pytest.mark.parametrize(
    ("n", "extra", "expected"),
    [
        (1, {}, 1),
        (3, {}, 3),
        (1, sequential("auto", 4), 4),  # the upstream makes up to max_images even for n=1
        (2, sequential("auto", 4), 4),
        (5, sequential("auto", 3), 5),  # never fewer than n
        (1, sequential("auto"), 15),  # auto without max_images: up to 15, the most the upstream makes
        (2, sequential("disabled", 4), 2),  # max_images counts only in auto mode
        (1, sequential(None, 4), 1),
    ],
)
async def test_image_count(
    client: httpx.AsyncClient, clock: FakeClock, n: int, extra: dict[str, Any], expected: int
) -> None:
    task = await create(client, n=n, **extra)
    clock.advance(10)
    urls = urls_of(await poll(client, task["id"]))
    assert len(urls) == len(set(urls)) == expected
    for url in urls:
        assert (await client.get(url)).status_code == 200


async def test_fewer_fault_still_returns_fewer_in_sequential_mode(client: httpx.AsyncClient, clock: FakeClock) -> None:
    task = await create(client, "[fault:fewer] a series", n=1, **sequential("auto", 4))
    clock.advance(10)
    assert len(urls_of(await poll(client, task["id"]))) == 3


def test_key_fingerprint_is_short_and_stable() -> None:
    assert key_fingerprint(KEY) == key_fingerprint(KEY) != key_fingerprint(KEY + "x")
    assert re.fullmatch(r"[0-9a-f]{8}", key_fingerprint(KEY))
