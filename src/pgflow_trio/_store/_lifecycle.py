"""What lifecycle events need to know that the statements which change runs do not already return: which runs a
report's transaction ended, when a run started, which flow a run belongs to. Only run when someone listens."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Collection
from typing import Literal

import attrs

from pgflow_trio._store import RawConnection
from pgflow_trio._store._workers import RecoveredTask, recover_stalled_tasks


@attrs.frozen
class EndedRun:
    """A run that the transaction of a report (complete_task, fail_task, a recovery sweep) completed or failed."""

    run_id: uuid.UUID
    flow_slug: str
    status: Literal["completed", "failed"]
    duration: float
    """Seconds from the run's start to its end."""
    step_slug: str | None = None
    """For a failed run: the step whose task failed first."""
    error: str | None = None
    """For a failed run: that task's error."""


async def runs_ended_at(con: RawConnection, *, run_ids: Collection[uuid.UUID], at: datetime.datetime) -> list[EndedRun]:
    """Which of `run_ids` ended in the transaction whose `now()` was `at`: pgflow stamps `completed_at` or
    `failed_at` with the `now()` of the transaction that ends a run, so an equal stamp means that transaction
    ended it (a cancelled run ended in the cancel's transaction)."""
    if not run_ids:
        return []
    rows = await con.fetch(
        """SELECT r.run_id, r.flow_slug, r.status,
                  extract(epoch FROM coalesce(r.completed_at, r.failed_at) - r.started_at)::float8 AS duration,
                  f.step_slug, f.error_message
           FROM pgflow.runs r
           LEFT JOIN LATERAL (
               SELECT t.step_slug, t.error_message FROM pgflow.step_tasks t
               WHERE t.run_id = r.run_id AND t.status = 'failed'
               ORDER BY t.failed_at, t.step_slug, t.task_index LIMIT 1
           ) f ON r.status = 'failed'
           WHERE r.run_id = ANY($1::uuid[]) AND r.status IN ('completed', 'failed')
             AND coalesce(r.completed_at, r.failed_at) = $2""",
        list(set(run_ids)),
        at,
    )
    return [
        EndedRun(r["run_id"], r["flow_slug"], r["status"], r["duration"], r["step_slug"], r["error_message"])
        for r in rows
    ]


@attrs.frozen
class RunOrigin:
    run_id: uuid.UUID
    flow_slug: str
    started_at: datetime.datetime


async def run_origins(con: RawConnection, *, run_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, RunOrigin]:
    """Flow and start time of each of `run_ids` that exists."""
    rows = await con.fetch(
        "SELECT run_id, flow_slug, started_at FROM pgflow.runs WHERE run_id = ANY($1::uuid[])", list(set(run_ids))
    )
    return {r["run_id"]: RunOrigin(r["run_id"], r["flow_slug"], r["started_at"]) for r in rows}


@attrs.frozen
class Recovery:
    """A recovery sweep's tasks, their runs' flows, and (when asked) the runs the sweep failed."""

    tasks: list[RecoveredTask]
    flow_slugs: dict[uuid.UUID, str]
    ended: list[EndedRun]


async def recover_observed(
    con: RawConnection, *, stale_after: float, timeout_grace: float, check_ended: bool
) -> Recovery:
    """`recover_stalled_tasks`, with the flow of each recovered task's run; with `check_ended`, in one transaction
    whose `now()` then tells which runs the sweep failed (their last attempt was the one recovered)."""
    ended: list[EndedRun] = []
    if check_ended:
        async with con.transaction():
            tasks = await recover_stalled_tasks(con, stale_after=stale_after, timeout_grace=timeout_grace)
            if tasks:
                at = await con.fetchval("SELECT now()")
                ended = await runs_ended_at(con, run_ids={t.run_id for t in tasks}, at=at)
    else:
        tasks = await recover_stalled_tasks(con, stale_after=stale_after, timeout_grace=timeout_grace)
    origins = await run_origins(con, run_ids={t.run_id for t in tasks}) if tasks else {}
    return Recovery(tasks, {rid: o.flow_slug for rid, o in origins.items()}, ended)


async def ticks_served(con: RawConnection, *, flow_slug: str, ticks: list[datetime.datetime]) -> list[bool]:
    """For each tick, whether some worker served the flow then: registered before it, not yet stopped, and
    heartbeating within `pgflow_trio.live_worker_seconds()` of it (pgflow.workers keeps the rows of dead workers
    with their last heartbeat)."""
    if not ticks:
        return []
    rows = await con.fetch(
        """SELECT k.n, EXISTS (
                SELECT 1 FROM pgflow.workers w
                WHERE w.queue_name = $1 AND w.started_at <= k.tick
                  AND (w.deprecated_at IS NULL OR w.deprecated_at > k.tick)
                  AND w.last_heartbeat_at >= k.tick - make_interval(secs => pgflow_trio.live_worker_seconds())
           ) AS served
           FROM unnest($2::timestamptz[]) WITH ORDINALITY AS k(tick, n) ORDER BY k.n""",
        flow_slug,
        ticks,
    )
    return [r["served"] for r in rows]


async def completed_at_start(con: RawConnection, *, run_id: uuid.UUID) -> bool:
    """Whether a run just started is already completed (pgflow completes a run whose steps are all taskless, such
    as maps over empty arrays, inside start_flow)."""
    return bool(await con.fetchval("SELECT status = 'completed' FROM pgflow.runs WHERE run_id = $1", run_id))
