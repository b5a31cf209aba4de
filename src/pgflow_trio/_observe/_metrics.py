"""Task and queue metrics, whatever carries them (OpenTelemetry's metrics API, Prometheus).

Task metrics come from the lifecycle events (`subscribe_recorder`): counters of completed, failed and timed-out
attempts and histograms of handler duration and queue wait, by flow and step. Queue gauges (ready messages, the
oldest one's wait, live workers, per queue) come from `GAUGES`, which a Trio task refreshes from the database every
few seconds (`refresh_gauges`): exporters read them from their own threads and never query the database.
"""

from __future__ import annotations

import functools
import logging

import attrs
import trio

from pgflow_trio._exceptions import PgflowError
from pgflow_trio._observe._events import (
    Event,
    Subscription,
    TaskEvent,
    TaskException,
    TaskStart,
    TaskStop,
    TaskTimeout,
    subscribe,
)
from pgflow_trio._store import Database
from pgflow_trio._store._health import queue_health

log = logging.getLogger("pgflow_trio.metrics")


class TaskRecorder:
    """Where task metrics go; subclasses record them in their metrics library. `outcome` is completed, failed
    or timed_out."""

    def completed(self, flow: str, step: str) -> None:
        raise NotImplementedError

    def failed(self, flow: str, step: str) -> None:
        raise NotImplementedError

    def timed_out(self, flow: str, step: str) -> None:
        raise NotImplementedError

    def duration(self, flow: str, step: str, outcome: str, seconds: float) -> None:
        raise NotImplementedError

    def queue_wait(self, flow: str, step: str, seconds: float) -> None:
        raise NotImplementedError


def subscribe_recorder(recorder: TaskRecorder) -> Subscription:
    """Feed `recorder` from this process's task events until the subscription is closed."""

    def on_event(event: Event) -> None:
        if not isinstance(event, TaskEvent):
            return
        flow, step = event.flow_slug, event.step_slug
        if isinstance(event, TaskStart):
            recorder.queue_wait(flow, step, event.queue_wait)
        elif isinstance(event, TaskStop):
            recorder.completed(flow, step)
            recorder.duration(flow, step, "completed", event.duration)
        elif isinstance(event, TaskException):
            recorder.failed(flow, step)
            recorder.duration(flow, step, "failed", event.duration)
        elif isinstance(event, TaskTimeout):
            recorder.timed_out(flow, step)
            recorder.duration(flow, step, "timed_out", event.duration)

    return subscribe(on_event, TaskStart, TaskStop, TaskException, TaskTimeout)


@attrs.frozen
class QueueGauge:
    """One queue's gauges: messages ready to be read, how long the oldest of them has waited (0 when none), and
    the workers heartbeating for it."""

    queue: str
    depth: int
    oldest_age: float
    live_workers: int


class Gauges:
    """The latest queue gauges of this process, replaced whole (readers in other threads see one snapshot)."""

    def __init__(self) -> None:
        self.queues: tuple[QueueGauge, ...] = ()


GAUGES = Gauges()


async def read_gauges(db: Database, *, stale_after: float) -> tuple[QueueGauge, ...]:
    """The gauges of every flow's queue, read as the health check reads them."""
    queues = await db.run(functools.partial(queue_health, stale_after=stale_after))
    return tuple(QueueGauge(q.queue, q.visible, q.oldest_visible_age or 0.0, q.workers_alive) for q in queues)


async def refresh_gauges(
    db: Database,
    *,
    interval: float,
    stale_after: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Refresh `GAUGES` every `interval` seconds until cancelled (a failed read keeps the last values)."""
    started = False
    while True:
        try:
            GAUGES.queues = await read_gauges(db, stale_after=stale_after)
        except PgflowError as exc:
            log.warning("reading queue gauges failed: %s", exc)
        if not started:
            started = True
            task_status.started()
        await trio.sleep(interval)
