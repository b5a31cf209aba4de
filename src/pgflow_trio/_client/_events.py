"""Run events: the realtime.send stand-in NOTIFYs compact events on one channel; the engine LISTENs once and hands
each event to whoever watches that run. After a reconnect (events may be lost) watchers are told to resync."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
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

    def __init__(self) -> None:
        self._subscribers: dict[uuid.UUID, set[trio.MemorySendChannel[RunEvent | StepEvent | _Resync]]] = {}
        self.connected = False

    async def run(self, db: Database, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
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

    def _deliver(self, run_id: uuid.UUID, event: RunEvent | StepEvent | _Resync) -> None:
        for channel in list(self._subscribers.get(run_id, ())):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                # A slow watcher: drop the event but make it resync.
                with contextlib.suppress(trio.WouldBlock):
                    channel.send_nowait(_Resync())
            except trio.BrokenResourceError:
                pass

    def _broadcast_resync(self) -> None:
        for run_id in list(self._subscribers):
            self._deliver(run_id, _Resync())

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
