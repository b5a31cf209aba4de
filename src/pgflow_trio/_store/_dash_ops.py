"""What the dashboard's operations pages read: the overview's counters and hourly buckets, recent workers with
their running and completed tasks, per-queue depth and age, and schedules with their last runs.

Every statement is bounded for a big database: time windows over indexed columns (finished runs by
`coalesce(completed_at, failed_at)`, completed tasks by `completed_at`, workers by `last_heartbeat_at`), LIMITs, and
queue counts capped at `COUNT_CAP` rows instead of a full `count(*)`. Time bounds use `now()` (the statement's
start: each call runs outside a transaction), never the volatile `clock_timestamp()`, which no index can serve.
Each function is one unit of work on one connection (`Database.run(functools.partial(fn, ...))`)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Sequence

import asyncpg
import attrs

from pgflow_trio._definitions._slugs import slug_problem
from pgflow_trio._store import RawConnection, Record
from pgflow_trio._store._schedules import StoredSchedule, stored_schedules
from pgflow_trio._store._worker_queries import queue_table, queue_table_name

COUNT_CAP = 10_000
"""Queue counts stop at this many rows: beyond it the page shows `10,000+` and the planner's estimate."""
HOURS = 24
"""The overview's buckets: one per hour over the last day, the most recent first."""
WORKER_WINDOW = datetime.timedelta(days=1)
"""The workers page lists those that heartbeat within this window (alive, stale, or stopped/died recently)."""
WORKER_LIMIT = 500


@attrs.frozen
class HourBucket:
    """Runs that finished in one hour-long window, `hours_ago` hours before now (0: the last hour)."""

    hours_ago: int
    completed: int = 0
    failed: int = 0
    """Failed runs, not counting cancelled ones."""
    cancelled: int = 0


@attrs.frozen
class WaitingTask:
    """The task that has waited longest for a worker: its message visible since `waiting_since`, the task queued,
    or `abandoned`: started by a worker that never finished it, its message readable again."""

    flow_slug: str
    step_slug: str
    run_id: uuid.UUID
    task_index: int
    waiting_since: datetime.datetime
    paused: bool
    """Its queue is paused (the wait is deliberate)."""
    abandoned: bool = False


@attrs.frozen
class Overview:
    """The overview page's numbers, read at `now` (the database clock)."""

    now: datetime.datetime
    live_workers: int
    running_runs: int
    hours: tuple[HourBucket, ...]
    """`HOURS` buckets, index i = `hours_ago` i."""
    oldest_waiting: WaitingTask | None
    """The task waiting longest in a queue that is not paused."""
    oldest_paused: WaitingTask | None
    """The task waiting longest in a paused queue (a deliberate wait, shown apart)."""
    missing_queues: tuple[str, ...]
    """Flows whose queue table is missing (their waiting tasks cannot be seen)."""


@attrs.frozen
class WorkerRow:
    """A worker of the last day, with the tasks it runs now and those it completed recently."""

    worker_id: uuid.UUID
    queue_name: str
    function_name: str
    started_at: datetime.datetime
    last_heartbeat_at: datetime.datetime
    deprecated_at: datetime.datetime | None
    running: int
    completed_last_hour: int
    completed_last_minute: int


@attrs.frozen
class WorkersView:
    now: datetime.datetime
    workers: tuple[WorkerRow, ...]
    truncated: bool
    """More than `WORKER_LIMIT` workers heartbeat within the window; the most recent are shown."""


@attrs.frozen
class CappedCount:
    """A row count that stops at `COUNT_CAP`: `exact` is False when it stopped there."""

    value: int
    exact: bool


@attrs.frozen
class QueueStats:
    """A queue's messages now. Counts stop at `COUNT_CAP`; `estimate` is the planner's row estimate (None:
    never analysed)."""

    visible: CappedCount
    total: CappedCount
    estimate: int | None
    oldest_enqueued_at: datetime.datetime | None
    """When the oldest message (lowest id) was sent."""
    oldest_visible_since: datetime.datetime | None
    """Since when the longest-readable message has been readable: how long work has waited for a worker."""
    archived_estimate: int | None

    @property
    def invisible(self) -> CappedCount | None:
        """Messages hidden now (running tasks, delays, backoff); None when the counts are not both exact."""
        if not (self.visible.exact and self.total.exact):
            return None
        return CappedCount(self.total.value - self.visible.value, True)


@attrs.frozen
class QueueRow:
    """A flow's queue: its pause, its live workers, and its messages (`stats` None: its table is missing)."""

    flow_slug: str
    paused_at: datetime.datetime | None
    pause_reason: str | None
    live_workers: int
    stats: QueueStats | None


@attrs.frozen
class QueuesView:
    now: datetime.datetime
    queues: tuple[QueueRow, ...]


@attrs.frozen
class ScheduleRun:
    """A run a schedule started at `tick`; `state` is None when the run is gone (pruned) or the tick started none."""

    tick: datetime.datetime
    run_id: uuid.UUID | None
    state: str | None


@attrs.frozen
class SchedulesView:
    schedules: tuple[StoredSchedule, ...]
    recent_runs: dict[str, tuple[ScheduleRun, ...]]
    """Per schedule name, its last runs, the newest first."""


async def overview(con: RawConnection, *, stale_after: float) -> Overview:
    """Live workers, running runs, the last day's finished runs per hour, and the task waiting longest."""
    head = await con.fetchrow(
        """SELECT now() AS now,
                  (SELECT count(*) FROM pgflow.workers WHERE deprecated_at IS NULL
                     AND last_heartbeat_at > now() - make_interval(secs => $1)) AS live_workers,
                  (SELECT count(*) FROM pgflow.runs WHERE status = 'started') AS running""",
        stale_after,
    )
    assert head is not None
    rows = await con.fetch(
        # The predicate and expression are those of the index pgflow_trio_runs_finished_at (schema 7).
        """SELECT greatest(0, least($1 - 1, floor(extract(epoch FROM $2 - coalesce(r.completed_at, r.failed_at))
                                                  / 3600)))::int AS hours_ago,
                  count(*) FILTER (WHERE r.status = 'completed') AS completed,
                  count(*) FILTER (WHERE r.status = 'failed' AND c.run_id IS NULL) AS failed,
                  count(*) FILTER (WHERE r.status = 'failed' AND c.run_id IS NOT NULL) AS cancelled
           FROM pgflow.runs r LEFT JOIN pgflow_trio.run_cancellations c ON c.run_id = r.run_id
           WHERE r.status <> 'started'
             AND coalesce(r.completed_at, r.failed_at) > $2 - make_interval(hours => $1)
           GROUP BY 1""",
        HOURS,
        head["now"],
    )
    found = {r["hours_ago"]: HourBucket(r["hours_ago"], r["completed"], r["failed"], r["cancelled"]) for r in rows}
    hours = tuple(found.get(i, HourBucket(i)) for i in range(HOURS))
    queues = await _queues_with_tables(con)
    present = [q for q in queues if q.has_table]
    waiting, with_table = await _oldest_waiting(con, present) if present else ({}, [])
    missing = tuple(q.slug for q in queues if q.slug not in with_table)
    return Overview(
        head["now"], head["live_workers"], head["running"], hours, waiting.get(False), waiting.get(True), missing
    )


@attrs.frozen
class _Queue:
    slug: str
    has_table: bool
    paused_at: datetime.datetime | None
    pause_reason: str | None


async def _queues_with_tables(con: RawConnection) -> list[_Queue]:
    """Every flow's queue, whether its pgmq table exists, and its pause. Flows whose slug is not a valid one (the
    SQL text of a queue's table is built from it) count as having no table."""
    rows = await con.fetch(
        """SELECT f.flow_slug, p.paused_at, p.reason,
                  EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = 'pgmq' AND c.relname = 'q_' || lower(f.flow_slug)
                            AND c.relkind IN ('r', 'p')) AS has_table
           FROM pgflow.flows f LEFT JOIN pgflow_trio.queue_pauses p ON p.queue = f.flow_slug
           ORDER BY f.flow_slug"""
    )
    return [
        _Queue(r["flow_slug"], r["has_table"] and slug_problem(r["flow_slug"]) is None, r["paused_at"], r["reason"])
        for r in rows
    ]


_WAITING_PER_QUEUE = 20
"""Visible messages looked at per queue: a visible message whose task is no longer queued is skipped."""


async def _oldest_waiting(con: RawConnection, queues: Sequence[_Queue]) -> tuple[dict[bool, WaitingTask], list[str]]:
    """The task whose message has been visible the longest, among unpaused queues (key False) and among paused
    ones (key True), over every queue in one statement (each queue's visible messages come from its `vt` index,
    oldest first); and the queues whose tables were there. A task counts when queued, or when started but its
    message is readable again (its worker died: it waits for another)."""
    by_slug = {q.slug: q for q in queues}

    def statement(slugs: Sequence[str]) -> str:
        parts = [
            f"(SELECT ${i + 1}::text AS flow_slug, ${len(slugs) + i + 1}::bool AS paused, m.msg_id, m.vt "
            f"FROM {queue_table(slug)} m WHERE m.vt <= now() ORDER BY m.vt LIMIT {_WAITING_PER_QUEUE})"
            for i, slug in enumerate(slugs)
        ]
        return f"""SELECT DISTINCT ON (w.paused) w.paused, t.flow_slug, t.step_slug, t.run_id, t.task_index, w.vt,
                          t.status = 'started' AS abandoned
                   FROM ({" UNION ALL ".join(parts)}) w
                   JOIN pgflow.step_tasks t ON t.message_id = w.msg_id AND t.flow_slug = w.flow_slug
                                           AND t.status IN ('queued', 'started')
                   ORDER BY w.paused, w.vt"""

    def arguments(slugs: Sequence[str]) -> list[object]:
        return [*slugs, *(by_slug[slug].paused_at is not None for slug in slugs)]

    rows, found = await _over_queue_tables(con, [q.slug for q in queues], statement, arguments)
    waiting = {
        r["paused"]: WaitingTask(
            r["flow_slug"], r["step_slug"], r["run_id"], r["task_index"], r["vt"], r["paused"], r["abandoned"]
        )
        for r in rows
    }
    return waiting, found


async def _over_queue_tables(
    con: RawConnection,
    slugs: Sequence[str],
    statement: Callable[[Sequence[str]], str],
    arguments: Callable[[Sequence[str]], list[object]] = list,
) -> tuple[list[Record], list[str]]:
    """Run a statement over the tables of the queues `slugs`, and say which were there. A table dropped since it
    was looked up fails the whole statement: the tables are looked up again and the statement retried once over
    those that remain, so only the really missing queue reads as missing. A second drop in between yields no rows
    (the next refresh sees it)."""
    try:
        return await con.fetch(statement(slugs), *arguments(slugs)), list(slugs)
    except asyncpg.UndefinedTableError:
        pass
    remaining = await _with_tables(con, slugs)
    if not remaining:
        return [], []
    try:
        return await con.fetch(statement(remaining), *arguments(remaining)), remaining
    except asyncpg.UndefinedTableError:
        return [], remaining


async def _with_tables(con: RawConnection, slugs: Sequence[str]) -> list[str]:
    """Those of `slugs` whose queue table exists now."""
    rows = await con.fetch(
        """SELECT s.slug FROM unnest($1::text[]) WITH ORDINALITY AS s(slug, n)
           WHERE to_regclass(format('pgmq.%I', 'q_' || lower(s.slug))) IS NOT NULL ORDER BY s.n""",
        list(slugs),
    )
    return [r["slug"] for r in rows]


async def workers(con: RawConnection) -> WorkersView:
    """The workers that heartbeat within `WORKER_WINDOW` (the most recent `WORKER_LIMIT`), each with its tasks
    running now and those it completed in the last hour and minute."""
    rows = await con.fetch(
        """WITH w AS (
             SELECT worker_id, queue_name, function_name, started_at, last_heartbeat_at, deprecated_at
             FROM pgflow.workers
             WHERE last_heartbeat_at > now() - $1::interval
             ORDER BY last_heartbeat_at DESC LIMIT $2 + 1
           ), running AS (
             SELECT last_worker_id, count(*) AS n FROM pgflow.step_tasks
             WHERE status = 'started' AND last_worker_id IN (SELECT worker_id FROM w) GROUP BY 1
           ), done AS (
             SELECT last_worker_id, count(*) AS hour,
                    count(*) FILTER (WHERE completed_at > now() - interval '1 minute') AS minute
             FROM pgflow.step_tasks
             WHERE status = 'completed' AND completed_at > now() - interval '1 hour'
               AND last_worker_id IN (SELECT worker_id FROM w)
             GROUP BY 1
           )
           SELECT w.*, coalesce(running.n, 0) AS running, coalesce(done.hour, 0) AS hour,
                  coalesce(done.minute, 0) AS minute, now() AS now
           FROM w LEFT JOIN running ON running.last_worker_id = w.worker_id
                  LEFT JOIN done ON done.last_worker_id = w.worker_id
           ORDER BY (w.deprecated_at IS NULL) DESC, w.last_heartbeat_at DESC, w.worker_id""",
        WORKER_WINDOW,
        WORKER_LIMIT,
    )
    now = rows[0]["now"] if rows else await con.fetchval("SELECT now()")
    shown = [
        WorkerRow(
            r["worker_id"],
            r["queue_name"],
            r["function_name"],
            r["started_at"],
            r["last_heartbeat_at"],
            r["deprecated_at"],
            r["running"],
            r["hour"],
            r["minute"],
        )
        for r in rows
    ]
    return WorkersView(now, tuple(shown[:WORKER_LIMIT]), len(shown) > WORKER_LIMIT)


async def queues(con: RawConnection, *, stale_after: float) -> QueuesView:
    """Every flow's queue: pause, live workers, and message counts and ages (capped counts, index-served ages)."""
    found = await _queues_with_tables(con)
    live_rows = await con.fetch(
        """SELECT queue_name, count(*) AS n, now() AS now FROM pgflow.workers
           WHERE deprecated_at IS NULL AND last_heartbeat_at > now() - make_interval(secs => $1)
           GROUP BY 1""",
        stale_after,
    )
    live = {r["queue_name"]: r["n"] for r in live_rows}
    now = live_rows[0]["now"] if live_rows else await con.fetchval("SELECT now()")
    present = [q for q in found if q.has_table]
    stats = await _queue_stats(con, [q.slug for q in present]) if present else {}
    rows = tuple(QueueRow(q.slug, q.paused_at, q.pause_reason, live.get(q.slug, 0), stats.get(q.slug)) for q in found)
    return QueuesView(now, rows)


async def _queue_stats(con: RawConnection, slugs: Sequence[str]) -> dict[str, QueueStats]:
    """Counts and ages of each queue, one row per queue, in one statement; a queue whose table is gone has none."""

    def statement(slugs: Sequence[str]) -> str:
        parts = []
        for i, slug in enumerate(slugs):
            table = queue_table(slug)
            archive = f'pgmq."a_{queue_table_name(slug)[2:]}"'
            parts.append(
                f"""SELECT ${i + 1}::text AS slug,
                      (SELECT count(*) FROM (SELECT 1 FROM {table} WHERE vt <= now()
                                             LIMIT {COUNT_CAP + 1}) v) AS visible,
                      (SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT {COUNT_CAP + 1}) t) AS total,
                      (SELECT reltuples FROM pg_class WHERE oid = '{table}'::regclass) AS estimate,
                      (SELECT enqueued_at FROM {table} ORDER BY msg_id LIMIT 1) AS oldest_enqueued,
                      (SELECT vt FROM {table} WHERE vt <= now() ORDER BY vt LIMIT 1) AS oldest_visible,
                      (SELECT reltuples FROM pg_class WHERE oid = to_regclass('{archive}')) AS archived"""
            )
        return " UNION ALL ".join(parts)

    rows, _ = await _over_queue_tables(con, slugs, statement)
    return {r["slug"]: _stats(r) for r in rows}


def _capped(value: int) -> CappedCount:
    return CappedCount(min(value, COUNT_CAP), value <= COUNT_CAP)


def _estimate(value: float | None) -> int | None:
    return None if value is None or value < 0 else int(value)


def _stats(r: Record) -> QueueStats:
    return QueueStats(
        visible=_capped(r["visible"]),
        total=_capped(r["total"]),
        estimate=_estimate(r["estimate"]),
        oldest_enqueued_at=r["oldest_enqueued"],
        oldest_visible_since=r["oldest_visible"],
        archived_estimate=_estimate(r["archived"]),
    )


async def schedules(con: RawConnection, *, runs_per_schedule: int = 5) -> SchedulesView:
    """Every schedule (`stored_schedules`) and the last runs each started, with their states (cancelled shown
    as such)."""
    stored = await stored_schedules(con)
    rows = await con.fetch(
        """SELECT s.name, t.tick, t.run_id,
                  CASE WHEN r.status = 'failed' AND c.run_id IS NOT NULL THEN 'cancelled' ELSE r.status END AS state
           FROM pgflow_trio.schedules s
           CROSS JOIN LATERAL (SELECT tick, run_id FROM pgflow_trio.cron_ticks k WHERE k.schedule_name = s.name
                               ORDER BY tick DESC LIMIT $1) t
           LEFT JOIN pgflow.runs r ON r.run_id = t.run_id
           LEFT JOIN pgflow_trio.run_cancellations c ON c.run_id = t.run_id
           ORDER BY s.name, t.tick DESC""",
        runs_per_schedule,
    )
    recent: dict[str, list[ScheduleRun]] = {}
    for r in rows:
        recent.setdefault(r["name"], []).append(ScheduleRun(r["tick"], r["run_id"], r["state"]))
    return SchedulesView(tuple(stored), {name: tuple(runs) for name, runs in recent.items()})
