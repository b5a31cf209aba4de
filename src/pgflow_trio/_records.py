"""Typed records the engine returns (runs, step states, flows, health) and the errors that name them."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from typing import Literal, TypeAlias

import attrs

from ._errors import PgflowError

RunStatus = Literal["started", "completed", "failed"]

JSON: TypeAlias = "dict[str, JSON] | list[JSON] | str | int | float | bool | None"
"""A JSON value as decoded from the database (run inputs and outputs, untyped results)."""

JSONInput: TypeAlias = "Mapping[str, JSONInput] | Sequence[JSONInput] | str | int | float | bool | None"
"""Anything that encodes as JSON, accepted where raw JSON goes in (untyped starts): read-only containers, so a
`dict[str, int]` is accepted too."""


class RunNotFound(PgflowError):
    """No run has this id."""


class FlowNotFound(PgflowError):
    """No flow has this slug in the database."""


class FlowInUse(PgflowError):
    """Live workers still serve the flow; stop them first or pass force=True."""


class RunFailed(PgflowError):
    """The run failed: `step_slug` is the step that failed and `error` its last error message."""

    def __init__(self, run_id: uuid.UUID, flow_slug: str, step_slug: str | None, error: str | None) -> None:
        where = f" at step {step_slug!r}" if step_slug else ""
        super().__init__(f"run {run_id} of {flow_slug} failed{where}: {error or 'no error message'}")
        self.run_id = run_id
        self.flow_slug = flow_slug
        self.step_slug = step_slug
        self.error = error


class RunTimeout(PgflowError, TimeoutError):
    """Waiting for a run's result took longer than the timeout given; the run itself goes on."""


@attrs.frozen
class StepState:
    """One step of one run."""

    step_slug: str
    status: str
    remaining_tasks: int | None
    initial_tasks: int | None
    remaining_deps: int
    error_message: str | None
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    completed_at: datetime.datetime | None
    failed_at: datetime.datetime | None


@attrs.frozen
class Run:
    """A run of a flow. `steps` is filled by `get_run_with_states` (empty otherwise)."""

    run_id: uuid.UUID
    flow_slug: str
    status: RunStatus
    input: JSON
    output: JSON
    remaining_steps: int
    started_at: datetime.datetime
    completed_at: datetime.datetime | None
    failed_at: datetime.datetime | None
    steps: tuple[StepState, ...] = ()

    @property
    def finished(self) -> bool:
        return self.status != "started"


@attrs.frozen
class RunPage:
    """One page of `list_runs`; pass `next_cursor` as `cursor` for the next (None: last page)."""

    runs: tuple[Run, ...]
    next_cursor: str | None


@attrs.frozen
class FlowInfo:
    """A flow in the database: its options, steps, and how many runs it has by status."""

    slug: str
    max_attempts: int
    base_delay: int
    timeout: int
    steps: tuple[str, ...]
    created_at: datetime.datetime
    runs: dict[str, int]


@attrs.frozen
class QueueHealth:
    """A flow's queue: live and stale workers, and its messages. Ages are in seconds.

    `depth` and `oldest_message_age` count every message, also those invisible while a task runs or waits for
    its delay or retry backoff; `visible` and `oldest_visible_age` count only messages a worker could read now, the
    age measured from the moment each became visible: how long work has waited for a worker."""

    queue: str
    workers_alive: int
    workers_stale: int
    depth: int
    oldest_message_age: float | None
    visible: int = 0
    oldest_visible_age: float | None = None


@attrs.frozen
class Health:
    """What `health_check` found. `ok` is False when there is any problem: the database unreachable, the schema
    incomplete, a queue with visible work and no live worker, or work waiting longer than `max_age`. `warnings`
    (workers that stopped heartbeating) do not make it unhealthy."""

    ok: bool
    database: str
    server_version: str | None
    core_version: str | None
    schema_version: int | None
    queues: tuple[QueueHealth, ...]
    problems: tuple[str, ...]
    warnings: tuple[str, ...] = ()
