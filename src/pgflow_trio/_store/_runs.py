"""Starting and reading runs. Each function runs inside asyncio on one connection (one crossing per call)."""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from typing import Any

import asyncpg
import attrs

from pgflow_trio._definitions._slugs import slug_problem
from pgflow_trio._exceptions import DefinitionError, FlowNotFound
from pgflow_trio._models import Cancellation, Run, RunPage, StepState
from pgflow_trio._store import RawConnection, Record
from pgflow_trio._store._traces import TraceContext
from pgflow_trio._store._worker_queries import queue_table

_RUN_COLUMNS = (
    "run_id, flow_slug, status, input::text AS input, output::text AS output, remaining_steps, "
    "started_at, completed_at, failed_at, c.run_id IS NOT NULL AS cancelled, c.reason AS cancel_reason, "
    "c.cancelled_by, c.cancelled_at, l.rerun_of"
)
_RUNS = (
    "pgflow.runs LEFT JOIN pgflow_trio.run_cancellations AS c USING (run_id) "
    "LEFT JOIN pgflow_trio.run_links AS l USING (run_id)"
)
"""pgflow's runs with our cancellations and rerun links (`run_id` is the joined column)."""
_STATE_CONDITIONS = {
    "started": "status = 'started'",
    "completed": "status = 'completed'",
    "failed": "status = 'failed' AND c.run_id IS NULL",
    "cancelled": "status = 'failed' AND c.run_id IS NOT NULL",
}


def checked_slug(slug: str) -> str:
    """`slug` if it is a valid flow slug (so it may name a queue table), else FlowNotFound."""
    problem = slug_problem(slug)
    if problem is not None:
        raise FlowNotFound(f"there is no flow {slug!r}: a flow slug {problem}")
    return slug


async def start_run(
    con: RawConnection,
    *,
    slug: str,
    input_json: str,
    run_id: uuid.UUID | None,
    at: datetime.datetime | None = None,
    delay: float | None = None,
    trace: TraceContext | None = None,
) -> tuple[uuid.UUID, bool]:
    """Start a run (or find the run `run_id` names). Returns (run_id, existed).

    With `at`/`delay`, the run is stored now and its first tasks become visible then, in the same transaction;
    with `trace`, the run's trace context is stored in it too (an existing run keeps its own)."""
    if run_id is not None:
        existing = await _existing(con, run_id, slug)
        if existing is not None:
            return existing, True
    try:
        async with con.transaction():  # a savepoint when the caller has a transaction open
            new_id: uuid.UUID = await _start_flow(con, slug, input_json, run_id, trace)
            if at is not None or delay is not None:
                await con.execute(
                    f"UPDATE {queue_table(checked_slug(slug))} SET vt = greatest(vt, coalesce($2, clock_timestamp() "
                    "+ make_interval(secs => $3))) WHERE msg_id IN (SELECT message_id FROM pgflow.step_tasks "
                    "WHERE run_id = $1 AND message_id IS NOT NULL)",
                    new_id,
                    at,
                    delay if delay is not None else 0.0,
                )
    except asyncpg.ForeignKeyViolationError as exc:
        raise FlowNotFound(
            f"there is no flow {slug!r} in the database: start a worker for it (it registers the flow) or run "
            f"`python -m pgflow_trio compile ...` and apply the SQL"
        ) from exc
    except asyncpg.UniqueViolationError:
        if run_id is None:
            raise
        existing = await _existing(con, run_id, slug)
        if existing is None:
            raise
        return existing, True
    return new_id, False


async def _start_flow(
    con: RawConnection, slug: str, input_json: str, run_id: uuid.UUID | None, trace: TraceContext | None
) -> uuid.UUID:
    """pgflow.start_flow; with `trace`, the run's trace context is stored by the same statement (no extra round
    trip)."""
    if trace is None:
        started: uuid.UUID = await con.fetchval(
            "SELECT run_id FROM pgflow.start_flow($1, $2::jsonb, $3)", slug, input_json, run_id
        )
        return started
    traced: uuid.UUID = await con.fetchval(
        "INSERT INTO pgflow_trio.run_traces (run_id, traceparent, tracestate) "
        "SELECT run_id, $4, $5 FROM pgflow.start_flow($1, $2::jsonb, $3) RETURNING run_id",
        slug,
        input_json,
        run_id,
        trace.traceparent,
        trace.tracestate,
    )
    return traced


async def _existing(con: RawConnection, run_id: uuid.UUID, slug: str) -> uuid.UUID | None:
    found = await con.fetchval("SELECT flow_slug FROM pgflow.runs WHERE run_id = $1", run_id)
    if found is None:
        return None
    if found != slug:
        raise DefinitionError(f"run {run_id} already exists for flow {found!r}, not {slug!r}")
    return run_id


def _run(row: Record, steps: tuple[StepState, ...] = ()) -> Run:
    return Run(
        run_id=row["run_id"],
        flow_slug=row["flow_slug"],
        status=row["status"],
        input=json.loads(row["input"]),
        output=None if row["output"] is None else json.loads(row["output"]),
        remaining_steps=row["remaining_steps"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        failed_at=row["failed_at"],
        steps=steps,
        cancellation=Cancellation(row["run_id"], row["cancel_reason"], row["cancelled_by"], row["cancelled_at"])
        if row["cancelled"]
        else None,
        rerun_of=row["rerun_of"],
    )


async def fetch_run(con: RawConnection, *, run_id: uuid.UUID, with_states: bool) -> Run | None:
    row = await con.fetchrow(f"SELECT {_RUN_COLUMNS} FROM {_RUNS} WHERE run_id = $1", run_id)
    if row is None:
        return None
    steps: tuple[StepState, ...] = ()
    if with_states:
        rows = await con.fetch(
            """SELECT ss.step_slug, ss.status, ss.remaining_tasks, ss.initial_tasks, ss.remaining_deps,
                      ss.error_message, ss.created_at, ss.started_at, ss.completed_at, ss.failed_at
               FROM pgflow.step_states ss JOIN pgflow.steps s USING (flow_slug, step_slug)
               WHERE ss.run_id = $1 ORDER BY s.step_index""",
            run_id,
        )
        steps = tuple(StepState(**dict(r)) for r in rows)
    return _run(row, steps)


async def failure_of(con: RawConnection, *, run_id: uuid.UUID) -> tuple[str | None, str | None]:
    """(failed step, its error message) of a failed run."""
    row = await con.fetchrow(
        """SELECT step_slug, error_message FROM pgflow.step_states WHERE run_id = $1 AND status = 'failed'
           ORDER BY failed_at LIMIT 1""",
        run_id,
    )
    if row is not None:
        return row["step_slug"], row["error_message"]
    row = await con.fetchrow(
        """SELECT step_slug, error_message FROM pgflow.step_tasks WHERE run_id = $1 AND status = 'failed'
           ORDER BY failed_at LIMIT 1""",
        run_id,
    )
    return (row["step_slug"], row["error_message"]) if row is not None else (None, None)


def _encode_cursor(run: Run) -> str:
    return base64.urlsafe_b64encode(f"{run.started_at.isoformat()}|{run.run_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime.datetime, uuid.UUID]:
    try:
        stamp, run_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.datetime.fromisoformat(stamp), uuid.UUID(run_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"invalid cursor {cursor!r}: pass the next_cursor of a previous page") from exc


async def list_runs(
    con: RawConnection,
    *,
    flow_slug: str | None,
    status: str | None,
    started_after: datetime.datetime | None,
    started_before: datetime.datetime | None,
    limit: int,
    cursor: str | None,
) -> RunPage:
    """Runs newest first, filtered (`status` is a run state: failed excludes cancelled runs); keyset-paginated on
    (started_at, run_id)."""
    conditions = ["TRUE"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if flow_slug is not None:
        conditions.append(f"flow_slug = {arg(flow_slug)}")
    if status is not None:
        conditions.append(_STATE_CONDITIONS[status])
    if started_after is not None:
        conditions.append(f"started_at >= {arg(started_after)}")
    if started_before is not None:
        conditions.append(f"started_at < {arg(started_before)}")
    if cursor is not None:
        stamp, last_id = _decode_cursor(cursor)
        conditions.append(f"(started_at, run_id) < ({arg(stamp)}, {arg(last_id)})")
    rows = await con.fetch(
        f"SELECT {_RUN_COLUMNS} FROM {_RUNS} WHERE {' AND '.join(conditions)} "
        f"ORDER BY started_at DESC, run_id DESC LIMIT {arg(limit + 1)}",
        *args,
    )
    runs = tuple(_run(r) for r in rows[:limit])
    return RunPage(runs, _encode_cursor(runs[-1]) if len(rows) > limit else None)


@attrs.frozen
class RetriedStep:
    """A step of a run whose task needed more than one attempt."""

    run_id: uuid.UUID
    step_slug: str
    attempts: int


async def runs_awaiting_retry(con: RawConnection, *, run_ids: list[uuid.UUID]) -> int:
    """How many of `run_ids` have a task queued again after a failed attempt (waiting out pgflow's backoff)."""
    count: int = await con.fetchval(
        """SELECT count(DISTINCT run_id) FROM pgflow.step_tasks
           WHERE run_id = ANY($1::uuid[]) AND status = 'queued' AND attempts_count > 0""",
        run_ids,
    )
    return count


async def retried_steps(con: RawConnection, *, run_ids: list[uuid.UUID]) -> list[RetriedStep]:
    """The steps of `run_ids` that took more than one attempt, with the most attempts any of their tasks took."""
    rows = await con.fetch(
        """SELECT run_id, step_slug, max(attempts_count) AS attempts FROM pgflow.step_tasks
           WHERE run_id = ANY($1::uuid[]) AND attempts_count > 1 GROUP BY run_id, step_slug ORDER BY step_slug""",
        run_ids,
    )
    return [RetriedStep(r["run_id"], r["step_slug"], r["attempts"]) for r in rows]
