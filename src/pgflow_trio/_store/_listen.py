"""A dedicated LISTEN connection that delivers notifications into a Trio channel and survives connection loss.

After a reconnect (or if the consumer falls behind and the buffer overflows) a `MissedNotifications` marker is
delivered: notifications may have been lost, so the consumer should re-read the state it cares about.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from pgflow_trio._exceptions import PgflowError
from pgflow_trio._store._database import Database, DedicatedSession
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
        async with self.db.dedicated_session() as session:
            await session.listen(self.channels, self._notified)
            self.listener.backend_pid = session.backend_pid
            if task_status is not None:
                task_status.started()
            else:
                self.listener.reconnects += 1
                self._deliver(MissedNotifications("reconnected"))
            await self._watch(session)

    def _notified(self, channel: str, payload: str) -> None:
        self._deliver(Notification(channel, payload))

    async def _watch(self, session: DedicatedSession) -> None:
        while not session.lost.is_set():
            with trio.move_on_after(self.health_interval):
                await session.lost.wait()
            if session.lost.is_set():
                return
            with trio.move_on_after(self.health_interval) as scope:
                try:
                    await session.execute("SELECT 1")
                except PgflowError:
                    return
            if scope.cancelled_caught:
                return
