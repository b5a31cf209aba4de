"""Retention: deleting finished runs with everything they left behind. Each function is one unit of work run inside
asyncio on one connection (`Database.run(functools.partial(fn, ...))`: one crossing).

A run goes with its step tasks and step states (pgflow's foreign keys have no cascade, so they go first, in that
order), every row of ours that references it (our foreign keys cascade), and its messages: the archived ones
(`pgmq.a_<queue>`) and any still in the queue (`pgmq.q_<queue>`), found through the message ids its tasks record.
Only finished runs are candidates, and among them only runs no handler is working on (a failed run's sibling task
may still be running): a started run is never touched whatever its age.

Each batch is one short transaction: it claims its runs with `FOR UPDATE SKIP LOCKED`, so it never waits for a run
a worker has locked, and with a `lock_timeout` on every statement, so it gives up (and leaves the runs to a later
pass) rather than queue behind a worker's lock on a task or a message.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import asyncpg

from pgflow_trio._models import PruneReport, PruneStatus
from pgflow_trio._store import RawConnection
from pgflow_trio._store._worker_queries import queue_table_name

LOCK_TIMEOUT_MS = 2000
"""How long one statement of a batch may wait for a lock before the batch gives up."""

_UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

# Finished runs of the chosen statuses (and flow) that finished before the cutoff and have no task in a handler.
# `status <> 'started'` and the coalesce match the partial index of migration 0007.
_PRUNABLE = """
    r.status <> 'started' AND r.status = ANY($1::text[])
    AND coalesce(r.completed_at, r.failed_at) < $2
    AND ($3::text IS NULL OR r.flow_slug = $3)
    AND NOT EXISTS (SELECT 1 FROM pgflow.step_tasks t WHERE t.run_id = r.run_id AND t.status = 'started')
"""


def statuses_of(status: PruneStatus) -> list[str]:
    return ["completed", "failed"] if status == "all" else [status]


def _archive(queue: str) -> str:
    return f'pgmq."a_{queue_table_name(queue)[2:]}"'


def _queue(queue: str) -> str:
    return f'pgmq."{queue_table_name(queue)}"'


async def cutoff(con: RawConnection, *, older_than: float) -> datetime.datetime:
    """The database clock's now minus `older_than` seconds: runs that finished before it are old enough."""
    value: datetime.datetime = await con.fetchval(
        "SELECT clock_timestamp() - make_interval(secs => $1::double precision)", older_than
    )
    return value


async def _existing_queues(con: RawConnection, names: Sequence[str]) -> list[str]:
    """Those of `names` that are pgmq queues (a flow's queue may have been dropped by hand)."""
    rows = await con.fetch(
        "SELECT queue_name FROM pgmq.meta WHERE queue_name = ANY($1::text[]) ORDER BY queue_name", list(names)
    )
    return [r["queue_name"] for r in rows]


async def queues(con: RawConnection, *, flow_slug: str | None) -> list[str]:
    """The queues of every flow (or of `flow_slug`) that pgmq holds."""
    if flow_slug is not None:
        return await _existing_queues(con, [flow_slug])
    rows = await con.fetch("SELECT flow_slug FROM pgflow.flows")
    return await _existing_queues(con, [r["flow_slug"] for r in rows])


def _count(status: str) -> int:
    """The row count of a DELETE's command tag."""
    return int(status.split()[-1])


async def prune_batch(
    con: RawConnection,
    *,
    cutoff: datetime.datetime,
    status: PruneStatus,
    flow_slug: str | None,
    limit: int,
) -> PruneReport:
    """Delete up to `limit` prunable runs, oldest first, with their rows and messages, in one transaction.

    A batch that waited `LOCK_TIMEOUT_MS` for a lock is rolled back and reported as skipped (`skipped_batches=1`)."""
    try:
        async with con.transaction():
            await con.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
            return await _delete_batch(con, cutoff=cutoff, status=status, flow_slug=flow_slug, limit=limit)
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
        return PruneReport(cutoff, skipped_batches=1)


async def _delete_batch(
    con: RawConnection, *, cutoff: datetime.datetime, status: PruneStatus, flow_slug: str | None, limit: int
) -> PruneReport:
    rows = await con.fetch(
        f"""SELECT r.run_id FROM pgflow.runs r WHERE {_PRUNABLE}
            ORDER BY coalesce(r.completed_at, r.failed_at) LIMIT $4 FOR UPDATE OF r SKIP LOCKED""",
        statuses_of(status),
        cutoff,
        flow_slug,
        limit,
    )
    run_ids = [r["run_id"] for r in rows]
    if not run_ids:
        return PruneReport(cutoff)
    tasks = await con.fetch(
        "DELETE FROM pgflow.step_tasks WHERE run_id = ANY($1::uuid[]) RETURNING flow_slug, message_id", run_ids
    )
    states = await con.execute("DELETE FROM pgflow.step_states WHERE run_id = ANY($1::uuid[])", run_ids)
    runs = await con.execute("DELETE FROM pgflow.runs WHERE run_id = ANY($1::uuid[])", run_ids)
    messages: dict[str, list[int]] = {}
    for task in tasks:
        if task["message_id"] is not None:
            messages.setdefault(task["flow_slug"], []).append(task["message_id"])
    archived = queued = 0
    for queue in await _existing_queues(con, sorted(messages)):
        ids = messages[queue]
        archived += _count(await con.execute(f"DELETE FROM {_archive(queue)} WHERE msg_id = ANY($1::bigint[])", ids))
        queued += _count(await con.execute(f"DELETE FROM {_queue(queue)} WHERE msg_id = ANY($1::bigint[])", ids))
    return PruneReport(
        cutoff,
        runs=_count(runs),
        step_states=_count(states),
        step_tasks=len(tasks),
        archived_messages=archived,
        queued_messages=queued,
        batches=1,
    )


def _runless(queue: str) -> str:
    """Archive rows of `queue` archived before the cutoff ($1), after msg_id $2 (keyset), at most $3 scanned, whose
    message names a run (a UUID in `run_id`) that no longer exists."""
    return f"""
        scanned AS (
            SELECT msg_id, message FROM {_archive(queue)}
            WHERE archived_at < $1 AND msg_id > $2 ORDER BY msg_id LIMIT $3
        ),
        runless AS (
            SELECT s.msg_id FROM scanned s
            WHERE s.message->>'run_id' ~ '{_UUID}'
              AND NOT EXISTS (
                  SELECT 1 FROM pgflow.runs r
                  WHERE r.run_id = CASE WHEN s.message->>'run_id' ~ '{_UUID}' THEN (s.message->>'run_id')::uuid END
              )
        )"""


async def sweep_archive(
    con: RawConnection, *, queue: str, cutoff: datetime.datetime, after: int, limit: int, dry_run: bool
) -> tuple[int, int | None]:
    """Delete (or with `dry_run` count) the archive rows of `queue` archived before `cutoff` whose run is gone,
    scanning at most `limit` rows past msg_id `after` in one short transaction. Returns (rows, the last msg_id
    scanned when there may be more to scan, else None). Waiting too long for a lock ends the sweep early."""
    gone = (
        "SELECT 1 FROM runless"
        if dry_run
        else f"DELETE FROM {_archive(queue)} a USING runless o WHERE a.msg_id = o.msg_id RETURNING 1"
    )
    sql = f"""WITH {_runless(queue)}, gone AS ({gone})
              SELECT (SELECT count(*) FROM gone) AS gone, (SELECT max(msg_id) FROM scanned) AS last,
                     (SELECT count(*) FROM scanned) AS scanned"""
    try:
        async with con.transaction():
            await con.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
            row = await con.fetchrow(sql, cutoff, after, limit)
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
        return 0, None
    assert row is not None
    return int(row["gone"]), (int(row["last"]) if row["scanned"] >= limit else None)


async def count_prunable(
    con: RawConnection, *, cutoff: datetime.datetime, status: PruneStatus, flow_slug: str | None
) -> PruneReport:
    """What pruning would delete now (every prunable run, not a batch), deleting nothing."""
    args: list[Any] = [statuses_of(status), cutoff, flow_slug]
    row = await con.fetchrow(
        f"""WITH doomed AS (SELECT r.run_id FROM pgflow.runs r WHERE {_PRUNABLE})
            SELECT (SELECT count(*) FROM doomed) AS runs,
                   (SELECT count(*) FROM pgflow.step_states s JOIN doomed USING (run_id)) AS states,
                   (SELECT count(*) FROM pgflow.step_tasks t JOIN doomed USING (run_id)) AS tasks""",
        *args,
    )
    assert row is not None
    archived = queued = 0
    for queue in await queues(con, flow_slug=flow_slug):
        ids = f"""SELECT t.message_id FROM pgflow.step_tasks t JOIN pgflow.runs r USING (run_id)
                  WHERE t.flow_slug = $4 AND t.message_id IS NOT NULL AND {_PRUNABLE}"""
        archived += await con.fetchval(f"SELECT count(*) FROM {_archive(queue)} WHERE msg_id IN ({ids})", *args, queue)
        queued += await con.fetchval(f"SELECT count(*) FROM {_queue(queue)} WHERE msg_id IN ({ids})", *args, queue)
    return PruneReport(
        cutoff,
        dry_run=True,
        runs=row["runs"],
        step_states=row["states"],
        step_tasks=row["tasks"],
        archived_messages=archived,
        queued_messages=queued,
    )
