"""A worker's presence in `pgflow.workers` and its background duties: register, heartbeat, deregister, queue
notifications, visibility extension and recovery of stalled tasks. Each function is one unit of work run inside
asyncio on one connection (`Database.run(functools.partial(fn, ...))`: one crossing)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping

import attrs

from pgflow_trio._exceptions import DefinitionError
from pgflow_trio._store import RawConnection


@attrs.frozen
class RecoveredTask:
    """A task recovery failed back to pgflow (which retries it or fails it for good), and why."""

    run_id: uuid.UUID
    step_slug: str
    task_index: int
    reason: str


async def register_worker(
    con: RawConnection, *, queue: str, worker_id: uuid.UUID, function_name: str
) -> dict[str, int]:
    """Register the worker for `queue` (its flow's slug); returns each step's timeout (the step's, else the
    flow's). DefinitionError when the flow is not in the database."""
    rows = await con.fetch(
        "SELECT step_slug, coalesce(s.opt_timeout, f.opt_timeout) AS timeout FROM pgflow.steps s "
        "JOIN pgflow.flows f USING (flow_slug) WHERE flow_slug = $1",
        queue,
    )
    if not rows:
        raise DefinitionError(f"flow {queue!r} does not exist in the database; start with register_flow")
    await add_workers(con, workers={worker_id: queue}, function_name=function_name)
    return {r["step_slug"]: r["timeout"] for r in rows}


async def add_workers(con: RawConnection, *, workers: Mapping[uuid.UUID, str], function_name: str) -> None:
    """One row in `pgflow.workers` per worker id (-> its queue), without checking the flows: pgflow's
    `start_tasks` records the worker that claimed each task."""
    for worker_id, queue in workers.items():
        await con.execute(
            "INSERT INTO pgflow.workers (queue_name, worker_id, function_name) VALUES ($1, $2, $3)",
            queue,
            worker_id,
            function_name,
        )


async def deregister_worker(con: RawConnection, *, worker_id: uuid.UUID) -> None:
    """Mark the worker stopped (deprecated), keeping an earlier mark."""
    await deregister_workers(con, worker_ids=[worker_id])


async def deregister_workers(con: RawConnection, *, worker_ids: Collection[uuid.UUID]) -> None:
    """Mark the workers stopped (deprecated), keeping earlier marks."""
    await con.execute(
        "UPDATE pgflow.workers SET deprecated_at = coalesce(deprecated_at, now()) WHERE worker_id = ANY($1::uuid[])",
        list(worker_ids),
    )


async def heartbeat(con: RawConnection, *, worker_id: uuid.UUID) -> bool:
    """Record that the worker is alive; returns whether it has been marked deprecated (it should drain)."""
    deprecated = await con.fetchval(
        "UPDATE pgflow.workers SET last_heartbeat_at = clock_timestamp() WHERE worker_id = $1 "
        "RETURNING deprecated_at IS NOT NULL",
        worker_id,
    )
    return bool(deprecated)


async def enable_queue_notifications(con: RawConnection, *, queue: str) -> None:
    """Make `queue` notify whenever a message may have become readable: our triggers notify on inserts and when a
    message becomes visible earlier without an insert (`pgflow_trio.enable_notify_visible`). Once per queue, in one
    transaction; concurrent workers serialize on a lock. (pgmq's own insert notifications are not used: they stay
    silent for a queue name with capitals.)"""
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock(hashtextextended('pgflow_trio:notify:' || $1, 0))", queue)
        await con.execute("SELECT pgflow_trio.enable_notify_visible($1)", queue)


@attrs.frozen
class LivenessBound:
    """How recently a worker must have heartbeaten to count as serving its flow's schedules."""

    seconds: float
    """`pgflow_trio.live_worker_seconds()`: the setting when it holds a positive number, else 60."""
    setting: str | None
    """The raw setting `pgflow_trio.live_worker_seconds` (None: unset)."""


async def liveness_bound(con: RawConnection) -> LivenessBound:
    """The silence after which a worker no longer counts as live for its flow's schedules, and the raw setting."""
    row = await con.fetchrow(
        "SELECT pgflow_trio.live_worker_seconds() AS bound, "
        "current_setting('pgflow_trio.live_worker_seconds', true) AS setting"
    )
    assert row is not None
    return LivenessBound(row["bound"], row["setting"])


async def extend_visibility(con: RawConnection, *, queue: str, msg_ids: list[int], seconds: int) -> None:
    """Keep the messages of running tasks invisible for `seconds` more."""
    await con.execute(
        "SELECT pgflow.set_vt_batch($1, $2::bigint[], $3::int[])", queue, msg_ids, [seconds] * len(msg_ids)
    )


async def recover_stalled_tasks(
    con: RawConnection, *, stale_after: float, timeout_grace: float, limit: int = 100
) -> list[RecoveredTask]:
    """Fail (through pgflow's retry policy) tasks left `started` by silent workers or past timeout + grace; and give
    a new message to a queued task of a recently retried run whose message a late report from before the retry
    archived (`pgflow_trio.requeue_stranded_tasks`)."""
    rows = await con.fetch(
        "SELECT run_id, step_slug, task_index, reason FROM pgflow_trio.recover_stalled_tasks($1, $2, $3)",
        stale_after,
        timeout_grace,
        limit,
    )
    stranded = await con.fetch("SELECT run_id, step_slug, task_index FROM pgflow_trio.requeue_stranded_tasks()")
    return [RecoveredTask(r["run_id"], r["step_slug"], r["task_index"], r["reason"]) for r in rows] + [
        RecoveredTask(r["run_id"], r["step_slug"], r["task_index"], _STRANDED) for r in stranded
    ]


_STRANDED = "its queue message was archived by a late report from before the run's retry; sent a new one"


async def live_workers(con: RawConnection, *, queue: str, stale_after: float) -> int:
    """How many workers serve `queue`: registered, not deprecated, heartbeating within `stale_after` seconds."""
    count: int = await con.fetchval(
        """SELECT count(*) FROM pgflow.workers WHERE queue_name = $1 AND deprecated_at IS NULL
           AND last_heartbeat_at > clock_timestamp() - make_interval(secs => $2)""",
        queue,
        stale_after,
    )
    return count


async def ended_runs(con: RawConnection, *, run_ids: Collection[uuid.UUID]) -> list[uuid.UUID]:
    """Which of `run_ids` are no longer running (failed, cancelled or completed): their running handlers' work
    can no longer count (pgflow ignores a completion of a failed run)."""
    rows = await con.fetch(
        "SELECT run_id FROM pgflow.runs WHERE run_id = ANY($1::uuid[]) AND status <> 'started'", list(run_ids)
    )
    return [r["run_id"] for r in rows]
