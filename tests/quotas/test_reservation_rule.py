"""The reservation rule: what goes upstream follows from what was reserved, never the other way round.

A caller once got 15 images for 2 reserved by sending `max_images` (or an empty options object) beside `n: 2`: the
gateway added `auto` and kept the caller's cap. These tests go through the app and the sandbox upstream, which
always makes the most images the body it receives allows (and, with the `extra` fault, 15 whatever it was asked).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.fixtures.gateway import Harness

URL = "/v1/images/generations"
REFERENCE = "https://images.example.com/ref-{}.png"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def day_used(gw: Harness, key: str) -> int:
    r = await gw.client.get("/v1/usage", headers=bearer(key))
    assert r.status_code == 200, r.text
    used: int = r.json()["day"]["used"]
    return used


async def submit_and_finish(gw: Harness, key: str, body: dict[str, Any]) -> tuple[int, int, int]:
    """(images reserved at submit, images handed out on completion, images charged in the end)."""
    before = await day_used(gw, key)
    r = await gw.client.post(URL, headers=bearer(key), json=body)
    assert r.status_code == 200, r.text
    reserved = await day_used(gw, key) - before
    gw.clock.advance(15)  # past the sandbox's 10 s task, well within one day for 40 tasks
    done = await gw.client.get(f"{URL}/{r.json()['id']}", headers=bearer(key))
    assert done.json()["status"] == "completed", done.text
    delivered = len(done.json()["result"]["data"])
    return reserved, delivered, await day_used(gw, key) - before


@pytest.mark.parametrize(
    "metadata",
    [
        {"sequential_image_generation_options": {"max_images": 15}},
        {"sequential_image_generation_options": {}},
    ],
    ids=["caller-cap-without-auto", "empty-options"],
)
async def test_a_cap_beside_n_cannot_buy_more_images_than_n(gw: Harness, metadata: dict[str, Any]) -> None:
    key = await gw.new_tenant("acme", daily_images=1000)
    reserved, delivered, charged = await submit_and_finish(gw, key, {"prompt": "p", "n": 2, "metadata": metadata})
    assert (reserved, delivered, charged) == (2, 2, 2)


async def test_an_upstream_that_ignores_the_cap_hands_out_only_what_was_reserved(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=1000)
    reserved, delivered, charged = await submit_and_finish(gw, key, {"prompt": "p [fault:extra]", "n": 3})
    assert (reserved, delivered, charged) == (3, 3, 3)


def random_request(rng: random.Random) -> dict[str, Any]:
    """A random valid request over every field that changes how many images the upstream makes."""
    references = rng.choice([0, 0, 1, 3, 10])
    n = rng.randint(1, 15 - references)
    body: dict[str, Any] = {"prompt": "fuzz" + (" [fault:extra]" if rng.random() < 0.25 else ""), "n": n}
    if references:
        body["image_urls"] = [REFERENCE.format(i) for i in range(references)]
    metadata: dict[str, Any] = {}
    mode = rng.choice([None, "auto", "disabled"])
    if mode is not None:
        metadata["sequential_image_generation"] = mode
    options = rng.choice([None, {}, {"max_images": rng.randint(1, 15)}])
    if options is not None:
        metadata["sequential_image_generation_options"] = options
    if metadata or rng.random() < 0.5:
        body["metadata"] = metadata
    return body


async def test_random_requests_never_receive_more_images_than_were_reserved(gw: Harness) -> None:
    """Whatever the request and whatever the sandbox returns: handed out <= reserved, and charged == handed out."""
    key = await gw.new_tenant("acme", daily_images=100_000)
    rng = random.Random(19)
    for _ in range(40):
        body = random_request(rng)
        reserved, delivered, charged = await submit_and_finish(gw, key, body)
        assert 1 <= delivered <= reserved, body
        assert charged == delivered, body
        assert reserved >= body["n"], body
