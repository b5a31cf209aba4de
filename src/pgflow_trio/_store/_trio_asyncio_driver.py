"""The `trio-asyncio` driver: the asyncio loop runs inside Trio, so callbacks already run in Trio's thread."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import trio_asyncio

T = TypeVar("T")
P = ParamSpec("P")


class TrioAsyncioDriver:
    """Crossings through trio-asyncio's `run_aio_coroutine` (cancelling it cancels the asyncio task)."""

    name = "trio-asyncio"

    def __init__(self, loop: trio_asyncio.TrioEventLoop) -> None:
        self._loop = loop

    async def cross(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self._loop.run_aio_coroutine(coro)

    def call_in_loop(self, fn: Callable[[], object]) -> None:
        fn()

    def into_trio(self, fn: Callable[P, object]) -> Callable[P, None]:
        def callback(*args: P.args, **kwargs: P.kwargs) -> None:
            fn(*args, **kwargs)

        return callback


@asynccontextmanager
async def open_trio_asyncio_driver() -> AsyncIterator[TrioAsyncioDriver]:
    async with trio_asyncio.open_loop() as loop:
        yield TrioAsyncioDriver(loop)
