"""Concurrent callers asking for the same key share one in-flight call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Task[T]] = {}

    async def do(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        call = self._calls.get(key)
        if call is None:
            call = asyncio.ensure_future(fn())
            self._calls[key] = call
            call.add_done_callback(lambda _: self._calls.pop(key, None))
        # A caller that goes away must not cancel the call the others are waiting for.
        return await asyncio.shield(call)

    def __len__(self) -> int:
        return len(self._calls)
