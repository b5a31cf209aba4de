"""Lifecycle events: one frozen record per event, delivered synchronously to the process's subscribers.

`subscribe(callback, *kinds)` registers a callback for some event classes (or dotted names), or for every event
when none is given; the returned `Subscription` unsubscribes when closed (it is a context manager too). Callbacks
run inline in the task that emits the event, so they must be quick and must not block: hand slow work to a channel.
A callback that raises is logged (once with its traceback, then counted) and never breaks the emitter.

Emitters build a record only when someone listens: `if wanted(TaskStop): emit(TaskStop(...))`, so events cost a
dictionary lookup when nobody subscribes.
"""

from __future__ import annotations

import datetime
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, overload

import attrs

log = logging.getLogger("pgflow_trio.events")


@attrs.frozen(kw_only=True)
class Event:
    """Base of every lifecycle event. `name` is the dotted event name (`task.stop`); `at` the wall-clock time
    (seconds since the epoch) when it fired."""

    name: ClassVar[str] = ""
    at: float


E = TypeVar("E", bound=Event)
Callback = Callable[[Any], object]


class Subscription:
    """A registered callback; `close()` (or leaving the `with` block) unsubscribes it. Idempotent."""

    def __init__(self, callback: Callback, kinds: frozenset[type[Event]] | None) -> None:
        self.callback = callback
        self.kinds = kinds
        self.errors = 0
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _registry.remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kinds = "all events" if self.kinds is None else ", ".join(sorted(k.name for k in self.kinds))
        return f"<Subscription {getattr(self.callback, '__qualname__', self.callback)!r} to {kinds}>"


class _Registry:
    """Subscriptions by event class, rebuilt on (rare) changes so that `wanted` and `emit` are lookups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []
        self.by_kind: dict[type[Event], tuple[Subscription, ...]] = {}

    def add(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.append(subscription)
            self._rebuild()

    def remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                self._rebuild()

    def _rebuild(self) -> None:
        table: dict[type[Event], list[Subscription]] = {}
        for kind in _all_kinds():
            table[kind] = [s for s in self._subscriptions if s.kinds is None or kind in s.kinds]
        self.by_kind = {kind: tuple(subs) for kind, subs in table.items() if subs}


_registry = _Registry()


def _all_kinds() -> list[type[Event]]:
    found: list[type[Event]] = []
    pending = list(Event.__subclasses__())
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    return [k for k in found if k.name]


def event_kinds() -> dict[str, type[Event]]:
    """Every event class by its dotted name."""
    return {k.name: k for k in _all_kinds()}


def _kind(spec: type[Event] | str) -> type[Event]:
    if isinstance(spec, str):
        kinds = event_kinds()
        if spec not in kinds:
            raise ValueError(f"unknown event {spec!r}: the events are {', '.join(sorted(kinds))}")
        return kinds[spec]
    if not (isinstance(spec, type) and issubclass(spec, Event) and spec.name):
        raise TypeError(f"{spec!r} is not an event class or an event name")
    return spec


@overload
def subscribe(callback: Callable[[E], object], kind: type[E], /) -> Subscription: ...
@overload
def subscribe(callback: Callable[[Event], object], /, *kinds: type[Event] | str) -> Subscription: ...
def subscribe(callback: Callable[[Any], object], /, *kinds: type[Event] | str) -> Subscription:
    """Call `callback(event)` for every event of the given classes or dotted names (all events when none is
    given), in this process, until the subscription is closed."""
    if not callable(callback):
        raise TypeError(f"the callback must be callable, got {callback!r}")
    subscription = Subscription(callback, frozenset(_kind(k) for k in kinds) if kinds else None)
    _registry.add(subscription)
    return subscription


def wanted(kind: type[Event]) -> bool:
    """Whether anyone listens for `kind` (check it before building the record)."""
    return kind in _registry.by_kind


def emit(event: Event) -> None:
    """Hand `event` to its subscribers. A subscriber that raises is logged and skipped; nothing propagates."""
    for subscription in _registry.by_kind.get(type(event), ()):
        try:
            subscription.callback(event)
        except Exception:
            subscription.errors += 1
            if subscription.errors == 1:
                log.exception(
                    "event subscriber %r failed on %s (later failures are only counted)", subscription, event.name
                )


# ---- the events ---------------------------------------------------------------------------------------------
# Durations and waits are in seconds. Worker and task events come from the worker that does the work; run events
# from the process whose call or report made the run change (the engine that started or cancelled it, the worker
# whose report completed or failed it); schedule events from the scheduler that fired or skipped the tick.


@attrs.frozen(kw_only=True)
class WorkerEvent(Event):
    """Metadata of every worker event."""

    worker_id: uuid.UUID
    flow_slug: str


@attrs.frozen(kw_only=True)
class WorkerStart(WorkerEvent):
    """A worker registered and is about to read its queue."""

    name: ClassVar[str] = "worker.start"
    concurrency: int
    signal: str


@attrs.frozen(kw_only=True)
class WorkerStop(WorkerEvent):
    """A worker stopped (drained, or cancelled); `duration`: how long it served."""

    name: ClassVar[str] = "worker.stop"
    duration: float


@attrs.frozen(kw_only=True)
class PollStart(WorkerEvent):
    """A read of the queue begins, asking for at most `asked` messages."""

    name: ClassVar[str] = "worker.poll.start"
    asked: int


@attrs.frozen(kw_only=True)
class PollStop(WorkerEvent):
    """A read ended: `read` tasks claimed, in `duration` (including a server-side poll's wait)."""

    name: ClassVar[str] = "worker.poll.stop"
    asked: int
    read: int
    duration: float


@attrs.frozen(kw_only=True)
class TaskEvent(Event):
    """Metadata of every event of one task attempt."""

    worker_id: uuid.UUID
    flow_slug: str
    step_slug: str
    task_index: int
    attempt: int
    run_id: uuid.UUID
    msg_id: int


@attrs.frozen(kw_only=True)
class TaskStart(TaskEvent):
    """A handler is about to run; `queue_wait`: from the message's enqueue time to now."""

    name: ClassVar[str] = "task.start"
    queue_wait: float


@attrs.frozen(kw_only=True)
class TaskStop(TaskEvent):
    """A handler returned and its output was handed to be stored."""

    name: ClassVar[str] = "task.stop"
    duration: float
    queue_wait: float


@attrs.frozen(kw_only=True)
class TaskException(TaskEvent):
    """A handler raised (`retryable` is False when its input could not fit and no retry can help)."""

    name: ClassVar[str] = "task.exception"
    duration: float
    error_type: str
    error: str
    retryable: bool


@attrs.frozen(kw_only=True)
class TaskTimeout(TaskEvent):
    """A handler was cancelled at its step's timeout; the attempt fails."""

    name: ClassVar[str] = "task.timeout"
    duration: float
    timeout: float


@attrs.frozen(kw_only=True)
class TaskRelease(TaskEvent):
    """A running task was handed back on shutdown without using an attempt."""

    name: ClassVar[str] = "task.released"
    duration: float


@attrs.frozen(kw_only=True)
class TaskCancel(TaskEvent):
    """A handler was cancelled because its run was cancelled or failed while it ran (not a failed attempt)."""

    name: ClassVar[str] = "task.cancelled"
    duration: float


@attrs.frozen(kw_only=True)
class TaskRecover(Event):
    """A worker's recovery sweep failed back to pgflow a task its worker abandoned (or requeued one a retry
    lost); `worker_id` is the recovering worker."""

    name: ClassVar[str] = "task.recovered"
    worker_id: uuid.UUID
    flow_slug: str
    run_id: uuid.UUID
    step_slug: str
    task_index: int
    reason: str


@attrs.frozen(kw_only=True)
class RunEvent(Event):
    """Metadata of every run event."""

    run_id: uuid.UUID
    flow_slug: str


@attrs.frozen(kw_only=True)
class RunStart(RunEvent):
    """A run was started (by this process's engine)."""

    name: ClassVar[str] = "run.started"


@attrs.frozen(kw_only=True)
class RunComplete(RunEvent):
    """A run completed; `duration`: from its start."""

    name: ClassVar[str] = "run.completed"
    duration: float


@attrs.frozen(kw_only=True)
class RunFail(RunEvent):
    """A run failed; `step_slug` and `error` say where and why when known."""

    name: ClassVar[str] = "run.failed"
    duration: float
    step_slug: str | None
    error: str | None


@attrs.frozen(kw_only=True)
class RunCancel(RunEvent):
    """A run was cancelled (by this process's engine)."""

    name: ClassVar[str] = "run.cancelled"
    duration: float
    reason: str | None
    by: str | None


@attrs.frozen(kw_only=True)
class ScheduleFire(Event):
    """A schedule's tick started a run; `lateness`: from the tick's time to the start."""

    name: ClassVar[str] = "schedule.fired"
    schedule: str
    flow_slug: str
    tick: datetime.datetime
    run_id: uuid.UUID
    lateness: float


@attrs.frozen(kw_only=True)
class ScheduleMiss(Event):
    """A schedule's tick was skipped (older than the grace, or no live worker served the flow)."""

    name: ClassVar[str] = "schedule.missed"
    schedule: str
    flow_slug: str
    tick: datetime.datetime
    reason: str
