"""Run events: the realtime.send stand-in NOTIFYs compact events on one channel; the engine LISTENs once and hands
each event to whoever watches that run. After a reconnect (events may be lost) watchers are told to resync."""

from __future__ import annotations

import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from pgflow_trio._models import RunEvent, StepEvent
from pgflow_trio._store import Database, MissedNotifications, open_listener

log = logging.getLogger("pgflow_trio.events")

CHANNEL = "pgflow_trio_events"


@attrs.frozen
class _Resync:
    pass


@attrs.frozen
class Change:
    """Something happened to a run (a run or step event), for subscribers to every run. `flow_slug` is None when
    the event did not say and the run's start was not seen."""

    run_id: uuid.UUID
    flow_slug: str | None


@attrs.frozen
class Resync:
    """Events were missed (the listener reconnected, or this subscriber fell behind): re-read everything."""


def offer(channel: trio.MemorySendChannel[Any], item: object, resync: object) -> None:
    """Put `item` on a bounded channel without ever waiting. Its last free slot is kept for `resync`, so when a slow
    subscriber's buffer is full the last thing it will read is a resync, read after every event dropped meanwhile."""
    stats = channel.statistics()
    free = stats.max_buffer_size - stats.current_buffer_used
    try:
        if free >= 2:
            channel.send_nowait(item)
        elif free == 1:
            channel.send_nowait(resync)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def parse(payload: str) -> RunEvent | StepEvent | None:
    """One NOTIFY payload of the stand-in as a typed event (None when it is not one)."""
    try:
        data: dict[str, Any] = json.loads(payload)
        kind = str(data["event"])
        run_id = uuid.UUID(data["run_id"])
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring malformed event payload %r", payload[:200])
        return None
    if kind.startswith("run:"):
        return RunEvent(kind, run_id, data.get("flow_slug"), str(data.get("status", "")), data.get("error"))
    if kind.startswith("step:") and "step_slug" in data:
        index = data.get("task_index")
        return StepEvent(
            kind,
            run_id,
            str(data["step_slug"]),
            str(data.get("status", "")),
            data.get("error"),
            int(index) if isinstance(index, int) else None,
        )
    return None


class EventHub:
    """Fans the engine's single LISTEN connection out to per-run subscribers."""

    FLOWS_REMEMBERED = 10_000
    """How many runs' flow slugs are remembered, to tell subscribers to every run which flow a step event is of."""

    def __init__(self) -> None:
        self._subscribers: dict[uuid.UUID, set[trio.MemorySendChannel[RunEvent | StepEvent | _Resync]]] = {}
        self._everything: set[trio.MemorySendChannel[Change | Resync]] = set()
        self._flows: OrderedDict[uuid.UUID, str] = OrderedDict()
        self.connected = False
        self._ended = False

    async def run(self, db: Database, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and fan out until cancelled. When it ends, subscribers to every run read a resync and then the end
        of their channel (live views fall back to re-reading on a timer); per-run watchers read a resync."""
        self._ended = False
        try:
            async with open_listener(db, [CHANNEL]) as listener:
                self.connected = True
                task_status.started()
                async for item in listener:
                    if isinstance(item, MissedNotifications):
                        self._broadcast_resync()
                        continue
                    event = parse(item.payload)
                    if event is not None:
                        self._deliver(event.run_id, event)
                        self._deliver_everywhere(event)
        finally:
            self.connected = False
            self._ended = True
            self._broadcast_resync()
            self._close_everything()

    def _close_everything(self) -> None:
        for channel in list(self._everything):
            channel.close()
        self._everything.clear()

    def _deliver(self, run_id: uuid.UUID, event: RunEvent | StepEvent | _Resync) -> None:
        # A slow watcher drops events but is made to resync (see offer).
        for channel in list(self._subscribers.get(run_id, ())):
            offer(channel, event, _Resync())

    def _deliver_everywhere(self, event: RunEvent | StepEvent) -> None:
        change = Change(event.run_id, self._flow_of(event))
        for channel in list(self._everything):
            offer(channel, change, Resync())

    def _flow_of(self, event: RunEvent | StepEvent) -> str | None:
        if isinstance(event, RunEvent) and event.flow_slug:
            self._flows[event.run_id] = event.flow_slug
            self._flows.move_to_end(event.run_id)
            while len(self._flows) > self.FLOWS_REMEMBERED:
                self._flows.popitem(last=False)
            return event.flow_slug
        return self._flows.get(event.run_id)

    def _broadcast_resync(self) -> None:
        for run_id in list(self._subscribers):
            self._deliver(run_id, _Resync())
        for channel in list(self._everything):
            offer(channel, Resync(), Resync())

    @asynccontextmanager
    async def subscribe_all(self, buffer: int = 1000) -> AsyncIterator[trio.MemoryReceiveChannel[Change | Resync]]:
        """Every run's changes, for as long as the block runs. A subscriber that falls behind never blocks the
        others: it misses events and reads a Resync instead."""
        sender, receiver = trio.open_memory_channel[Change | Resync](max(buffer, 2))
        if self._ended:
            sender.close()  # the hub has stopped: nothing will come
        else:
            self._everything.add(sender)
        try:
            yield receiver
        finally:
            self._everything.discard(sender)
            sender.close()
            receiver.close()

    @asynccontextmanager
    async def subscribe(
        self, run_id: uuid.UUID
    ) -> AsyncIterator[trio.MemoryReceiveChannel[RunEvent | StepEvent | _Resync]]:
        sender, receiver = trio.open_memory_channel[RunEvent | StepEvent | _Resync](1000)
        self._subscribers.setdefault(run_id, set()).add(sender)
        try:
            yield receiver
        finally:
            subscribers = self._subscribers.get(run_id)
            if subscribers is not None:
                subscribers.discard(sender)
                if not subscribers:
                    del self._subscribers[run_id]
            sender.close()
            receiver.close()
