"""Fixtures of the sandbox tests: one app per test on a fake clock, and a loopback client of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from app.sandbox import create_sandbox_app
from app.sandbox.state import SandboxState
from tests.sandbox.support import FakeClock, client_for, make_config


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> FastAPI:
    return create_sandbox_app(make_config(), clock=clock)


@pytest.fixture
def state(app: FastAPI) -> SandboxState:
    sandbox: SandboxState = app.state.sandbox
    return sandbox


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c
