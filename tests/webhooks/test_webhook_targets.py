"""The webhook SSRF guard and sender, without a database: URL rules, address rules, and the connect-time check on the
address actually connected to (a fake resolver plays DNS, including a name that rebinds inward)."""

from __future__ import annotations

import pytest

from app.webhooks.sender import Sender
from app.webhooks.targets import TargetRefused, address_problem, parse_origin, parse_target
from tests.fixtures.webhook_receiver import receiving


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "not-an-ip",
        # issue 19: 6to4 around the metadata service and loopback, site-local, IPv4 special-purpose
        "2002:a9fe:a9fe::1",
        "2002:7f00:1::1",
        "2002:a00:1::1",
        "fec0::1",
        "192.0.0.8",
        "192.0.0.9",
        "192.88.99.1",
        "198.18.0.1",
        # NAT64 around loopback, IPv4-compatible, Teredo (its client 192.0.2.45), documentation
        "64:ff9b::7f00:1",
        "::7f00:1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:db8::1",
        "3fff::1",
        "ff0e::1",
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    assert address_problem(address, allow_private=False) is not None


@pytest.mark.parametrize(
    "address",
    # a wrapper around a public IPv4 address is as public as it (6to4, NAT64 on a DNS64 host, IPv4-mapped)
    ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "2002:808:808::1", "64:ff9b::808:808", "::ffff:8.8.8.8"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(address, allow_private=False) is None


def test_a_refusal_names_the_address_a_wrapper_carries() -> None:
    assert "169.254.169.254" in (address_problem("2002:a9fe:a9fe::1", allow_private=False) or "")


def test_the_setting_allows_internal_addresses() -> None:
    assert address_problem("127.0.0.1", allow_private=True) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http://user:pw@example.com/",
        "http://example.com@evil.test/",
        "http://evil.test\\@example.com/",
        "http:///nohost",
        "http://exa mple.com/",
        "http://example.com:99999/",
        "gopher://example.com/",
    ],
)
def test_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        parse_target(url)


def test_origins_are_canonical() -> None:
    assert parse_origin("HTTPS://Example.COM:443/") == "https://example.com"
    assert parse_origin("http://example.com:8080") == "http://example.com:8080"
    assert parse_origin("http://[::1]:80") == "http://[::1]"
    assert parse_target("https://Example.com/a/b?c=d#frag").origin == "https://example.com"
    with pytest.raises(TargetRefused):
        parse_origin("https://example.com/path")


async def test_a_name_that_resolves_inward_is_refused_before_connecting() -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async with receiving() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        sender = Sender(rebinding, allow_private=False, user_agent="test")
        try:
            outcome = await sender.post(f"http://hooks.example.com:{port}/hook", b"{}", {})
        finally:
            await sender.aclose()
        assert not outcome.delivered and outcome.error is not None and outcome.error.startswith("refused")
        assert receiver.requests == []


async def test_one_internal_address_among_public_ones_refuses_the_name() -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]

    sender = Sender(mixed, allow_private=False, user_agent="test")
    try:
        outcome = await sender.post("http://hooks.example.com/hook", b"{}", {})
    finally:
        await sender.aclose()
    assert not outcome.delivered and "10.0.0.7" in (outcome.error or "")


async def test_the_checked_address_is_called_under_the_name() -> None:
    async def local(host: str, port: int) -> list[str]:
        assert host == "hooks.example.com"
        return ["127.0.0.1"]

    async with receiving() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        sender = Sender(local, allow_private=True, user_agent="test-agent")
        try:
            outcome = await sender.post(f"http://hooks.example.com:{port}/hook?x=1", b'{"a":1}', {"X-Test": "1"})
        finally:
            await sender.aclose()
        assert outcome.delivered and outcome.status_code == 204
        [got] = receiver.requests
        assert got.headers["host"] == f"hooks.example.com:{port}" and got.path == "/hook?x=1"
        assert got.body == b'{"a":1}' and got.headers["x-test"] == "1" and got.headers["user-agent"] == "test-agent"


async def test_a_redirect_is_a_failed_attempt() -> None:
    async with receiving(fail_first=1, fail_status=307) as receiver:

        async def local(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        sender = Sender(local, allow_private=True, user_agent="test")
        try:
            outcome = await sender.post(receiver.url, b"{}", {})
        finally:
            await sender.aclose()
        assert not outcome.delivered and outcome.status_code == 307
