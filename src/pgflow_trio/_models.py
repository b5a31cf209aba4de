"""Every public record: runs, step states, flows, health, run events, install reports and schema status.

Plain attrs data; imports only `_util` and `_exceptions`."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from typing import Literal, TypeAlias

import attrs

RunStatus = Literal["started", "completed", "failed"]
RunState = Literal["started", "completed", "failed", "cancelled"]
"""A run's state as shown to people: pgflow's status, except that a cancelled run (pgflow status failed) is
`cancelled`."""

JSON: TypeAlias = "dict[str, JSON] | list[JSON] | str | int | float | bool | None"
"""A JSON value as decoded from the database (run inputs and outputs, untyped results)."""

JSONInput: TypeAlias = "Mapping[str, JSONInput] | Sequence[JSONInput] | str | int | float | bool | None"
"""Anything that encodes as JSON, accepted where raw JSON goes in (untyped starts): read-only containers, so a
`dict[str, int]` is accepted too."""


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
class Cancellation:
    """Who cancelled a run (`by`, as given to `cancel_run`), when (`at`) and why (`reason`)."""

    run_id: uuid.UUID
    reason: str | None
    by: str | None
    at: datetime.datetime


@attrs.frozen
class Run:
    """A run of a flow. `steps` is filled by `get_run_with_states` (empty otherwise). `status` is pgflow's;
    `state` tells a cancelled run (`cancellation` set) from a failed one. `rerun_of` is the run this one reruns."""

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
    cancellation: Cancellation | None = None
    rerun_of: uuid.UUID | None = None

    @property
    def finished(self) -> bool:
        return self.status != "started"

    @property
    def state(self) -> RunState:
        """`cancelled` for a cancelled run, else the status."""
        return "cancelled" if self.status == "failed" and self.cancellation is not None else self.status


@attrs.frozen
class RunPage:
    """One page of `list_runs`; pass `next_cursor` as `cursor` for the next (None: last page)."""

    runs: tuple[Run, ...]
    next_cursor: str | None


@attrs.frozen
class QueuePause:
    """A flow's queue is paused: our workers read none of its messages (runs still start; their tasks wait)."""

    since: datetime.datetime
    reason: str | None = None


@attrs.frozen
class FlowInfo:
    """A flow in the database: its options, steps, how many runs it has by state (started, completed, failed,
    cancelled), and whether its queue is paused."""

    slug: str
    max_attempts: int
    base_delay: int
    timeout: int
    steps: tuple[str, ...]
    created_at: datetime.datetime
    runs: dict[str, int]
    paused: QueuePause | None = None


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
    paused: QueuePause | None = None
    """Set while the queue is paused: waiting work is then expected, a warning and not a problem."""


@attrs.frozen
class Health:
    """What `health_check` found. `ok` is False when there is any problem: the database unreachable, the schema
    incomplete, a queue with visible work and no live worker, or work waiting longer than `max_age` (a paused queue
    is neither). `warnings` (workers that stopped heartbeating, paused queues) do not make it unhealthy."""

    ok: bool
    database: str
    server_version: str | None
    core_version: str | None
    schema_version: int | None
    queues: tuple[QueueHealth, ...]
    problems: tuple[str, ...]
    warnings: tuple[str, ...] = ()


@attrs.frozen
class RunEvent:
    """`run:started`, `run:completed` or `run:failed` (with the error message for failures)."""

    event: str
    run_id: uuid.UUID
    flow_slug: str | None
    status: str
    error: str | None = None


@attrs.frozen
class StepEvent:
    """`step:started`, `step:completed` or `step:failed` of one step (`task_index` when the event names a task)."""

    event: str
    run_id: uuid.UUID
    step_slug: str
    status: str
    error: str | None = None
    task_index: int | None = None


@attrs.frozen
class Snapshot:
    """The run's state when watching began (and again after events may have been missed)."""

    run: Run


Event = RunEvent | StepEvent | Snapshot


@attrs.frozen
class InstallReport:
    """What one `install` applied; empty when the database was already complete."""

    applied: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.applied)


@attrs.frozen
class SchemaStatus:
    """What `db check` reports."""

    server_version: str
    pgmq_version: str | None
    pgmq_source: str | None
    core_version: str | None
    core_applied: int
    core_expected: int
    realtime: str
    schema_version: int
    schema_expected: int
    pg_cron: str | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        pgmq = f"{self.pgmq_version} ({self.pgmq_source})" if self.pgmq_source else "missing"
        if self.core_applied == self.core_expected:
            core = f"{self.core_version} ({self.core_applied}/{self.core_expected} migrations)"
        elif self.core_applied:
            core = f"partial ({self.core_applied}/{self.core_expected} migrations)"
        else:
            core = "missing"
        return [
            f"server:           PostgreSQL {self.server_version}",
            f"pgmq:             {pgmq}",
            f"pgflow core:      {core}",
            f"realtime.send:    {self.realtime}",
            f"pgflow_trio:      schema {self.schema_version}/{self.schema_expected}",
            f"pg_cron:          {self.pg_cron or 'absent'}",
        ]


@attrs.frozen
class BulkOutcome:
    """What `cancel_runs` / `retry_runs` did: the runs acted on (with `dry_run`, those that would be), and the runs
    selected but left alone, each with the reason (one that finished meanwhile, a flow that changed)."""

    run_ids: tuple[uuid.UUID, ...]
    skipped: tuple[tuple[uuid.UUID, str], ...] = ()
    dry_run: bool = False

    @property
    def count(self) -> int:
        return len(self.run_ids)


PruneStatus = Literal["completed", "failed", "all"]
"""Which finished runs `prune_runs` deletes: completed ones, failed ones, or both."""


@attrs.frozen
class PruneReport:
    """What `prune_runs` deleted (or, with `dry_run`, would delete): rows per kind, finished before `cutoff`."""

    cutoff: datetime.datetime
    """Runs that finished (completed_at or failed_at) before this instant of the database clock were pruned."""
    dry_run: bool = False
    runs: int = 0
    step_states: int = 0
    step_tasks: int = 0
    archived_messages: int = 0
    """Rows of pgmq's archive tables (`pgmq.a_<queue>`): the pruned runs' messages and older runless ones."""
    queued_messages: int = 0
    """Messages still in a queue (`pgmq.q_<queue>`) for a pruned run, such as a failed run's tasks never started."""
    batches: int = 0
    """Transactions it took (none for a dry run)."""
    skipped_batches: int = 0
    """Batches given up because a worker held a lock too long (their runs are pruned on a later pass)."""

    def plus(self, other: PruneReport) -> PruneReport:
        """Both reports' counts added up (the cutoff and dry_run of this one)."""
        return attrs.evolve(
            self,
            runs=self.runs + other.runs,
            step_states=self.step_states + other.step_states,
            step_tasks=self.step_tasks + other.step_tasks,
            archived_messages=self.archived_messages + other.archived_messages,
            queued_messages=self.queued_messages + other.queued_messages,
            batches=self.batches + other.batches,
            skipped_batches=self.skipped_batches + other.skipped_batches,
        )

    def summary(self) -> str:
        """One line: what went (or would go)."""
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{verb} {self.runs} runs, {self.step_states} step states, {self.step_tasks} tasks, "
            f"{self.archived_messages} archived and {self.queued_messages} queued messages "
            f"(finished before {self.cutoff.isoformat(timespec='seconds')})"
        )
