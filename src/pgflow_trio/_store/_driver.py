"""The seam between Trio and the asyncio event loop that asyncpg needs, and the choice of driver behind it.

A driver owns an asyncio loop for the duration of `open_database` and offers three things: run an asyncio
coroutine from Trio in one crossing (`cross`), run a synchronous asyncpg operation on the loop without waiting
(`call_in_loop`: terminating a connection), and wrap a callback that asyncpg calls on the loop so that it runs in
Trio instead (`into_trio`: notification and termination listeners). Two drivers exist:

- `trio-asyncio`: the loop runs inside Trio (trio-asyncio); nothing crosses a thread.
- `thread`: a plain asyncio loop in a thread of its own, for where trio-asyncio does not import.

`PGFLOW_DRIVER` (or `open_database(driver=...)`) chooses: `auto` (trio-asyncio when it imports, else thread),
`trio-asyncio` or `thread`.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

from pgflow_trio._exceptions import ConfigurationError

T = TypeVar("T")
P = ParamSpec("P")

TRIO_ASYNCIO = "trio-asyncio"
THREAD = "thread"
DRIVERS = (TRIO_ASYNCIO, THREAD)
DriverChoice = Literal["auto", "trio-asyncio", "thread"]
"""What `driver=` and $PGFLOW_DRIVER accept: `auto` picks trio-asyncio when it imports, else thread."""
ENV_VAR = "PGFLOW_DRIVER"


class Driver(Protocol):
    """What the database layer needs from the bridge between Trio and asyncio."""

    @property
    def name(self) -> str:
        """`trio-asyncio` or `thread`."""
        ...

    async def cross(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the asyncio loop and return its result in Trio.

        Cancelling the Trio scope cancels the asyncio task and waits until it has finished (so a connection is
        never handed back mid-query); the driver's own exceptions come out unchanged."""
        ...

    def call_in_loop(self, fn: Callable[[], object]) -> None:
        """Run the synchronous `fn` on the asyncio loop (now or soon) without waiting for it."""
        ...

    def into_trio(self, fn: Callable[P, object]) -> Callable[P, None]:
        """A callback for asyncpg to call on the asyncio loop that runs `fn` in Trio (in order, never blocking)."""
        ...


@functools.cache
def trio_asyncio_problem() -> str | None:
    """Why trio-asyncio cannot be used here (None: it imports)."""
    try:
        with warnings.catch_warnings():
            # trio-asyncio subclasses asyncio's child watchers, deprecated since Python 3.12: its warning, not ours
            # (and under warnings-as-errors the half-done import would leave its loop policy behind).
            warnings.filterwarnings("ignore", message=".*ChildWatcher", category=DeprecationWarning)
            import trio_asyncio  # noqa: F401
    except Exception as exc:
        version = ".".join(map(str, sys.version_info[:2]))
        return f"trio-asyncio does not import on Python {version} ({type(exc).__name__}: {exc})"
    return None


def resolve_driver(requested: str | None = None) -> str:
    """The driver to use: `requested`, else $PGFLOW_DRIVER, else `auto`; ConfigurationError when it cannot be."""
    source = "driver="
    if requested is None:
        requested = os.environ.get(ENV_VAR) or "auto"
        source = ENV_VAR
    if not isinstance(requested, str):
        raise ConfigurationError(f"{source} must be a string (auto, trio-asyncio or thread), got {requested!r}")
    name = requested.strip().lower()
    if name == "auto":
        return TRIO_ASYNCIO if trio_asyncio_problem() is None else THREAD
    if name not in DRIVERS:
        raise ConfigurationError(f"unknown database driver {requested!r} ({source}): use auto, trio-asyncio or thread")
    if name == TRIO_ASYNCIO and (problem := trio_asyncio_problem()) is not None:
        raise ConfigurationError(f"database driver trio-asyncio ({source}): {problem}; use thread or auto")
    return name


def open_driver(name: str) -> AbstractAsyncContextManager[Driver]:
    """Start driver `name` (as `resolve_driver` returns it) for the duration of the block."""
    if name == TRIO_ASYNCIO:
        from pgflow_trio._store._trio_asyncio_driver import open_trio_asyncio_driver

        return open_trio_asyncio_driver()
    from pgflow_trio._store._thread_driver import open_thread_driver

    return open_thread_driver()
