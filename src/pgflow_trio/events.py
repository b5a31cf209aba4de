"""Lifecycle events of workers, tasks, runs and schedules, for metrics, tracing and logs of your own.

    from pgflow_trio import events

    def on_task_stop(event: events.TaskStop) -> None:
        histogram.observe(event.duration)

    subscription = events.subscribe(on_task_stop, events.TaskStop)   # or names: "task.stop", "task.exception"
    ...
    subscription.close()

Callbacks run synchronously in the task that emits the event: keep them quick and non-blocking. A callback that
raises is logged and never breaks a worker. The README lists every event with its measurements and metadata.
"""

from pgflow_trio._observe._events import (
    Event,
    PollStart,
    PollStop,
    RunCancel,
    RunComplete,
    RunEvent,
    RunFail,
    RunStart,
    ScheduleFire,
    ScheduleMiss,
    Subscription,
    TaskCancel,
    TaskEvent,
    TaskException,
    TaskRecover,
    TaskRelease,
    TaskStart,
    TaskStop,
    TaskTimeout,
    WorkerEvent,
    WorkerStart,
    WorkerStop,
    event_kinds,
    subscribe,
)

__all__ = [
    "Event",
    "PollStart",
    "PollStop",
    "RunCancel",
    "RunComplete",
    "RunEvent",
    "RunFail",
    "RunStart",
    "ScheduleFire",
    "ScheduleMiss",
    "Subscription",
    "TaskCancel",
    "TaskEvent",
    "TaskException",
    "TaskRecover",
    "TaskRelease",
    "TaskStart",
    "TaskStop",
    "TaskTimeout",
    "WorkerEvent",
    "WorkerStart",
    "WorkerStop",
    "event_kinds",
    "subscribe",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
