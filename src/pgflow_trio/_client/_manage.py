"""Managing flows in the database (list, get, delete, upsert) and checking health."""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

from pgflow_trio._definitions._compile import compile_flow
from pgflow_trio._definitions._model import FlowDef, slug_problem
from pgflow_trio._definitions._spec import flow_from_spec
from pgflow_trio._exceptions import FlowInUse, FlowNotFound
from pgflow_trio._models import FlowInfo, Health, QueueHealth
from pgflow_trio._store import Connection, Database, RawConnection
from pgflow_trio._store._registry import describe_differences, expected_shape, read_flow_shape
from pgflow_trio._store._runs import checked_slug
from pgflow_trio._store._schema import check
from pgflow_trio._store._worker_queries import queue_table

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('pgflow_trio:flow:' || $1, 0))"


async def list_flows(db: Database) -> list[FlowInfo]:
    rows = await db.fetch(
        """SELECT f.flow_slug, f.opt_max_attempts, f.opt_base_delay, f.opt_timeout, f.created_at,
                  coalesce((SELECT array_agg(s.step_slug ORDER BY s.step_index) FROM pgflow.steps s
                            WHERE s.flow_slug = f.flow_slug), '{}') AS steps,
                  coalesce((SELECT jsonb_object_agg(status, n) FROM (SELECT status, count(*) AS n FROM pgflow.runs r
                            WHERE r.flow_slug = f.flow_slug GROUP BY status) c), '{}')::text AS runs
           FROM pgflow.flows f ORDER BY f.flow_slug"""
    )
    return [
        FlowInfo(
            slug=r["flow_slug"],
            max_attempts=r["opt_max_attempts"],
            base_delay=r["opt_base_delay"],
            timeout=r["opt_timeout"],
            steps=tuple(r["steps"]),
            created_at=r["created_at"],
            runs={k: int(v) for k, v in json.loads(r["runs"]).items()},
        )
        for r in rows
    ]


async def flow_from_database(db: Database, slug: str) -> FlowDef:
    """The flow as the database holds it, as a FlowDef (plain data: no handlers, no types)."""
    async with db.connection() as con:
        actual = await read_flow_shape(con, checked_slug(slug))
    if actual is None:
        raise FlowNotFound(f"there is no flow {slug!r} in the database")
    spec: dict[str, Any] = {"slug": slug, **actual["options"], "steps": []}
    for step in actual["steps"]:
        entry: dict[str, Any] = {"slug": step["slug"]}
        if step["deps"]:
            entry["deps"] = step["deps"]
        if step["step_type"] == "map":
            entry["step_type"] = "map"
        for key in ("max_attempts", "base_delay", "timeout", "start_delay"):
            if step[key] is not None:
                entry[key] = step[key]
        spec["steps"].append(entry)
    return flow_from_spec(spec, origin="database")


async def _live_workers(con: Connection, slug: str, stale_after: float) -> int:
    count: int = await con.fetchval(
        """SELECT count(*) FROM pgflow.workers WHERE queue_name = $1 AND deprecated_at IS NULL
           AND last_heartbeat_at > clock_timestamp() - make_interval(secs => $2)""",
        slug,
        stale_after,
    )
    return count


async def _delete(con: Connection, slug: str) -> dict[str, int]:
    counts = {}
    for table in ("step_tasks", "step_states", "runs", "deps", "steps"):
        status = await con.execute(f"DELETE FROM pgflow.{table} WHERE flow_slug = $1", slug)
        counts[table] = int(status.split()[-1])
    await con.execute("DELETE FROM pgflow.workers WHERE queue_name = $1", slug)
    await con.execute("DELETE FROM pgflow.flows WHERE flow_slug = $1", slug)
    if await con.fetchval("SELECT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = $1)", slug):
        await con.execute("SELECT pgmq.drop_queue($1)", slug)
    return counts


async def delete_flow(db: Database, slug: str, *, force: bool, stale_after: float) -> dict[str, int]:
    """Delete a flow with its runs, tasks and queue. Refuses while live workers serve it unless `force`."""
    async with db.transaction() as tx:
        await tx.execute(_LOCK, checked_slug(slug))
        if not await tx.fetchval("SELECT EXISTS (SELECT 1 FROM pgflow.flows WHERE flow_slug = $1)", slug):
            raise FlowNotFound(f"there is no flow {slug!r} in the database")
        live = await _live_workers(tx, slug, stale_after)
        if live and not force:
            raise FlowInUse(
                f"{live} live worker(s) serve flow {slug!r}: stop them first, or delete anyway with force=True "
                f"(CLI: --force); their tasks would fail"
            )
        return await _delete(tx, slug)


UpsertOutcome = Literal["created", "replaced", "unchanged"]


async def upsert_flow(
    db: Database, flow: FlowDef, *, force: bool, stale_after: float
) -> tuple[UpsertOutcome, dict[str, int]]:
    """Create the flow, or replace a different one of the same slug. Returns the outcome and, when replaced, how
    many rows went per table.

    Replacing DELETES the old flow's runs and tasks (pgflow flows are immutable)."""
    async with db.transaction() as tx:
        await tx.execute(_LOCK, flow.slug)
        actual = await read_flow_shape(tx, flow.slug)
        outcome: UpsertOutcome = "created"
        deleted: dict[str, int] = {}
        if actual is not None:
            if not describe_differences(expected_shape(flow), actual):
                return "unchanged", deleted
            live = await _live_workers(tx, flow.slug, stale_after)
            if live and not force:
                raise FlowInUse(f"{live} live worker(s) serve flow {flow.slug!r}: stop them or pass force=True")
            deleted = await _delete(tx, flow.slug)
            outcome = "replaced"
        for statement in compile_flow(flow):
            await tx.execute(statement)
        return outcome, deleted


_QUEUE_STATS = (
    "SELECT count(*) AS depth, count(*) FILTER (WHERE vt <= clock_timestamp()) AS visible, "
    "extract(epoch FROM clock_timestamp() - min(enqueued_at))::float8 AS oldest, "
    "extract(epoch FROM clock_timestamp() - min(vt) FILTER (WHERE vt <= clock_timestamp()))::float8 AS oldest_visible "
    "FROM {table}"
)


async def _queue_stats(con: RawConnection, *, stale_after: float) -> list[QueueHealth]:
    """Per flow: live/stale workers and message counts and ages, read from the queue tables (pgmq's metrics count
    invisible messages into the age, and an age from enqueue time makes every delayed job look stuck)."""
    rows = await con.fetch(
        """SELECT f.flow_slug,
                  (SELECT count(*) FROM pgflow.workers w WHERE w.queue_name = f.flow_slug
                    AND w.deprecated_at IS NULL
                    AND w.last_heartbeat_at > clock_timestamp() - make_interval(secs => $1)) AS alive,
                  (SELECT count(*) FROM pgflow.workers w WHERE w.queue_name = f.flow_slug
                    AND w.deprecated_at IS NULL
                    AND w.last_heartbeat_at <= clock_timestamp() - make_interval(secs => $1)) AS stale,
                  EXISTS (SELECT 1 FROM pgmq.meta m WHERE m.queue_name = f.flow_slug) AS has_queue
           FROM pgflow.flows f ORDER BY f.flow_slug""",
        stale_after,
    )
    queues = []
    for r in rows:
        slug = r["flow_slug"]
        stats = None
        if r["has_queue"] and slug_problem(slug) is None:
            stats = await con.fetchrow(_QUEUE_STATS.format(table=queue_table(slug)))
        queues.append(
            QueueHealth(
                slug,
                r["alive"],
                r["stale"],
                stats["depth"] if stats else 0,
                stats["oldest"] if stats else None,
                visible=stats["visible"] if stats else 0,
                oldest_visible_age=stats["oldest_visible"] if stats else None,
            )
        )
    return queues


def _queue_problems(q: QueueHealth, *, max_age: float | None, require_workers: bool) -> list[str]:
    problems = []
    waited = "" if q.oldest_visible_age is None else f", the oldest for {q.oldest_visible_age:.0f}s,"
    if require_workers and q.visible and not q.workers_alive:
        problems.append(f"queue {q.queue}: {q.visible} message(s) waiting{waited} and no live worker")
    elif max_age is not None and q.oldest_visible_age is not None and q.oldest_visible_age > max_age:
        problems.append(
            f"queue {q.queue}: a message has waited {q.oldest_visible_age:.0f}s for a worker (max age {max_age:g}s)"
        )
    return problems


async def health(db: Database, *, stale_after: float, max_age: float | None, require_workers: bool) -> Health:
    """Database reachable, schema complete, and per queue: live/stale workers, depth, and how long visible work
    has waited. Work that no live worker serves, or that waited longer than `max_age` seconds, is a problem."""
    try:
        status = await check(db)
    except Exception as exc:
        return Health(False, f"unreachable: {exc}", None, None, None, (), (f"database unreachable: {exc}",))
    problems = list(status.problems)
    warnings: list[str] = []
    queues: list[QueueHealth] = []
    if status.core_version is not None:
        queues = await db.run(functools.partial(_queue_stats, stale_after=stale_after))
        for q in queues:
            problems.extend(_queue_problems(q, max_age=max_age, require_workers=require_workers))
            if q.workers_stale:
                warnings.append(f"queue {q.queue}: {q.workers_stale} worker(s) stopped heartbeating")
    return Health(
        ok=not problems,
        database="reachable",
        server_version=status.server_version,
        core_version=status.core_version,
        schema_version=status.schema_version,
        queues=tuple(queues),
        problems=tuple(problems),
        warnings=tuple(warnings),
    )
