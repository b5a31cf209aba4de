"""Typed records the engine returns (runs, step states, flows, health) and the errors that name them."""

from __future__ import annotations

import datetime
import uuid
from typing import Any, Literal

import attrs

from ._errors import PgflowError

RunStatus = Literal["started", "completed", "failed"]


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
    input: Any
    output: Any
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
    """A flow's queue: live and stale workers, messages waiting, and the age of the oldest (seconds)."""

    queue: str
    workers_alive: int
    workers_stale: int
    depth: int
    oldest_message_age: float | None


@attrs.frozen
class Health:
    """What `health_check` found. `ok` is False when the database is unreachable or the schema incomplete."""

    ok: bool
    database: str
    server_version: str | None
    core_version: str | None
    schema_version: int | None
    queues: tuple[QueueHealth, ...]
    problems: tuple[str, ...]
