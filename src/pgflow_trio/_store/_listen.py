"""A dedicated LISTEN connection that delivers notifications into a Trio channel and survives connection loss.

After a reconnect (or if the consumer falls behind and the buffer overflows) a `MissedNotifications` marker is
delivered: notifications may have been lost, so the consumer should re-read the state it cares about.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
import attrs
import trio

from pgflow_trio._exceptions import PgflowError
from pgflow_trio._store._database import Database
from pgflow_trio._util import unwrap_single_errors

log = logging.getLogger("pgflow_trio.listen")


@attrs.frozen
class Notification:
    """One NOTIFY received on `channel`."""

    channel: str
    payload: str


@attrs.frozen
class MissedNotifications:
    """Notifications may have been lost (reconnect or overflow): re-read whatever state you track."""

    reason: str


ListenEvent = Notification | MissedNotifications


class Listener:
    """Receives notifications for a fixed set of channels; iterate it or call `receive()`."""

    def __init__(self, receiver: trio.MemoryReceiveChannel[ListenEvent]) -> None:
        self._receiver = receiver
        self.backend_pid: int | None = None
        self.reconnects = 0

    async def receive(self) -> ListenEvent:
        return await self._receiver.receive()

    def __aiter__(self) -> AsyncIterator[ListenEvent]:
        return self._receiver.__aiter__()


@asynccontextmanager
async def open_listener(
    db: Database,
    channels: Sequence[str],
    *,
    buffer: int = 10_000,
    health_interval: float = 5.0,
    max_backoff: float = 5.0,
) -> AsyncIterator[Listener]:
    """LISTEN on `channels` over a dedicated connection for the duration of the block."""
    sender, receiver = trio.open_memory_channel[ListenEvent](buffer)
    listener = Listener(receiver)
    maintainer = _Maintainer(db, tuple(channels), sender, listener, health_interval, max_backoff)
    async with unwrap_single_errors(), trio.open_nursery() as nursery:
        await nursery.start(maintainer.run)
        try:
            yield listener
        finally:
            nursery.cancel_scope.cancel()


@attrs.define
class _Maintainer:
    db: Database
    channels: tuple[str, ...]
    sender: trio.MemorySendChannel[ListenEvent]
    listener: Listener
    health_interval: float
    max_backoff: float
    _overflowed: bool = False

    def _deliver(self, event: ListenEvent) -> None:
        if self._overflowed:
            try:
                self.sender.send_nowait(MissedNotifications("buffer overflow"))
            except trio.WouldBlock:
                return
            self._overflowed = False
        try:
            self.sender.send_nowait(event)
        except trio.WouldBlock:
            self._overflowed = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = 0.05
        started = False
        while True:
            try:
                await self._session(task_status if not started else None)
            except PgflowError as exc:
                if not started:
                    raise
                log.warning("LISTEN connection failed (%s); retrying in %.2fs", exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            else:
                log.warning("LISTEN connection lost; reconnecting")
                backoff = 0.05
            started = True

    async def _session(self, task_status: trio.TaskStatus[None] | None) -> None:
        """Connect, LISTEN, and return once the connection is lost."""
        db = self.db
        lost = trio.Event()

        def on_notify(_con: object, _pid: int, channel: str, payload: object) -> None:
            self._deliver(Notification(channel, str(payload)))

        def on_terminate(_con: object) -> None:
            lost.set()

        async def connect() -> asyncpg.Connection[asyncpg.Record]:
            con = await asyncpg.connect(db.dsn, timeout=db.connect_timeout)
            try:
                con.add_termination_listener(on_terminate)
                for channel in self.channels:
                    await con.add_listener(channel, on_notify)
            except BaseException:
                con.terminate()
                raise
            return con

        con = await db._cross(connect())
        try:
            self.listener.backend_pid = con.get_server_pid()
            if task_status is not None:
                task_status.started()
            else:
                self.listener.reconnects += 1
                self._deliver(MissedNotifications("reconnected"))
            await self._watch(con, lost)
        finally:
            con.terminate()

    async def _watch(self, con: asyncpg.Connection[asyncpg.Record], lost: trio.Event) -> None:
        async def ping() -> None:
            await con.execute("SELECT 1")

        while not lost.is_set():
            with trio.move_on_after(self.health_interval):
                await lost.wait()
            if lost.is_set() or con.is_closed():
                return
            with trio.move_on_after(self.health_interval) as scope:
                try:
                    await self.db._cross(ping())
                except PgflowError:
                    return
            if scope.cancelled_caught:
                return
