"""The `thread` driver: asyncpg on a plain asyncio event loop in a thread of its own, bridged to Trio.

The loop thread lives exactly as long as the block of `open_thread_driver`. Work goes to it with
`loop.call_soon_threadsafe`; results and asyncpg's callbacks come back through Trio's thread-safe entry point
(`TrioToken.run_sync_soon`), so the Trio thread never blocks. A crossing starts the asyncio task itself rather than
use `asyncio.run_coroutine_threadsafe`: the `concurrent.futures.Future` that returns reports itself cancelled the
moment it is asked to be, before the task has stopped, and a crossing must not return while its query still runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any, ParamSpec, TypeVar

import outcome
import trio

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("pgflow_trio.db")

THREAD_NAME = "pgflow_trio-asyncio-loop"


class ThreadDriver:
    """Crossings into an asyncio loop running in another thread."""

    name = "thread"

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken, thread: threading.Thread):
        self._loop = loop
        self._token = token
        self.thread = thread
        """The loop's thread (it has stopped once the driver's block has ended)."""

    async def cross(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        token = self._token
        waiter = trio.lowlevel.current_task()
        started: list[asyncio.Task[T]] = []
        cancel_requested: list[trio.lowlevel.RaiseCancelT] = []

        def resume(task: asyncio.Task[T]) -> None:  # on the loop, once the task has finished
            # The wait below returns the task's outcome itself (wrapped once more) to decide what a cancel means.
            token.run_sync_soon(trio.lowlevel.reschedule, waiter, outcome.Value(outcome.capture(task.result)))

        def start() -> None:  # on the loop
            task = loop.create_task(coro)
            task.add_done_callback(resume)
            started.append(task)

        def cancel() -> None:  # on the loop, always after start (the loop runs callbacks in order)
            started[0].cancel()

        def abort(raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            # Trio calls this at most once per wait; keep waiting until the task has really finished.
            cancel_requested.append(raise_cancel)
            loop.call_soon_threadsafe(cancel)
            return trio.lowlevel.Abort.FAILED

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:
            coro.close()
            raise
        result: outcome.Outcome[T] = await trio.lowlevel.wait_task_rescheduled(abort)
        if cancel_requested and isinstance(result, outcome.Error):
            # Whatever the task raised while being cancelled, the caller asked for cancellation.
            cancel_requested[0]()
        # A task that completed despite the request keeps its result (an acquired connection is not lost);
        # the cancelled scope still raises Cancelled at the caller's next checkpoint.
        return result.unwrap()

    def call_in_loop(self, fn: Callable[[], object]) -> None:
        with suppress(RuntimeError):  # the loop has closed: whatever fn would have closed went with it
            self._loop.call_soon_threadsafe(fn)

    def into_trio(self, fn: Callable[P, object]) -> Callable[P, None]:
        token = self._token

        def in_trio(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                fn(*args, **kwargs)
            except Exception:  # an exception here would crash the Trio run; asyncio would only have logged it
                log.exception("database callback %r failed", fn)

        def callback(*args: P.args, **kwargs: P.kwargs) -> None:
            with suppress(trio.RunFinishedError):  # Trio has finished: nobody is left to tell
                token.run_sync_soon(functools.partial(in_trio, *args, **kwargs))

        return callback


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread: run until stopped, then finish what is left and close the loop."""
    try:
        loop.run_forever()
    finally:
        try:
            _finish(loop)
        finally:
            loop.close()


def _finish(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await what is still running, then shut down async generators and the default executor."""

    async def drain() -> None:
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()

    loop.run_until_complete(drain())


@asynccontextmanager
async def open_thread_driver() -> AsyncIterator[ThreadDriver]:
    """Start an asyncio loop in its own thread; stop it and join the thread (shielded) when the block ends."""
    token = trio.lowlevel.current_trio_token()
    # Not asyncio.new_event_loop(): once trio-asyncio is imported its loop policy refuses that inside Trio.
    # Nothing here needs the policy: a running loop is what asyncpg finds (get_running_loop, get_event_loop).
    loop = asyncio.SelectorEventLoop()
    thread = threading.Thread(target=_serve, args=(loop,), name=THREAD_NAME, daemon=True)
    thread.start()
    try:
        yield ThreadDriver(loop, token, thread)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join)
