"""Flows in the database: read one back as a FlowDef, list, create, replace and delete them. Each function is one
unit of work run inside asyncio on one connection (`Database.run(functools.partial(fn, ...))`: one crossing)."""

from __future__ import annotations

import json
from typing import Literal

from pgflow_trio._definitions._build import build_flow
from pgflow_trio._definitions._compile import compile_flow
from pgflow_trio._definitions._diff import flow_differences
from pgflow_trio._definitions._model import FlowDef, Options, StepDef
from pgflow_trio._exceptions import FlowInUse, FlowNotFound
from pgflow_trio._models import FlowInfo, QueuePause
from pgflow_trio._store import RawConnection
from pgflow_trio._store._workers import live_workers

UpsertOutcome = Literal["created", "replaced", "unchanged"]
DATABASE_ORIGIN = "database"
"""The origin of FlowDefs read back from the database."""


async def lock_flow(con: RawConnection, *, slug: str) -> None:
    """Serialize creating, replacing and deleting flow `slug` until the transaction ends."""
    await con.execute("SELECT pg_advisory_xact_lock(hashtextextended('pgflow_trio:flow:' || $1, 0))", slug)


async def read_flow(con: RawConnection, *, slug: str) -> FlowDef | None:
    """The flow `slug` as the database holds it, built through `build_flow` (plain data: no handlers, no types;
    its origin is "database"), or None when there is no such flow."""
    row = await con.fetchrow(
        "SELECT opt_max_attempts, opt_base_delay, opt_timeout FROM pgflow.flows WHERE flow_slug = $1", slug
    )
    if row is None:
        return None
    rows = await con.fetch(
        """SELECT s.step_slug, s.step_type, s.opt_max_attempts, s.opt_base_delay, s.opt_timeout, s.opt_start_delay,
                  coalesce((SELECT array_agg(d.dep_slug ORDER BY d.dep_slug) FROM pgflow.deps d
                            WHERE d.flow_slug = s.flow_slug AND d.step_slug = s.step_slug), '{}') AS deps
           FROM pgflow.steps s WHERE s.flow_slug = $1 ORDER BY s.step_index""",
        slug,
    )
    steps = [
        StepDef(
            slug=r["step_slug"],
            step_type=r["step_type"],
            deps=tuple(r["deps"]),
            options=Options(r["opt_max_attempts"], r["opt_base_delay"], r["opt_timeout"], r["opt_start_delay"]),
        )
        for r in rows
    ]
    options = Options(row["opt_max_attempts"], row["opt_base_delay"], row["opt_timeout"])
    return build_flow(slug, steps, options=options, origin=DATABASE_ORIGIN)


async def flow_exists(con: RawConnection, *, slug: str) -> bool:
    exists: bool = await con.fetchval("SELECT EXISTS (SELECT 1 FROM pgflow.flows WHERE flow_slug = $1)", slug)
    return exists


async def list_flows(con: RawConnection) -> list[FlowInfo]:
    """Every flow with its options, steps, run counts by state (cancelled runs apart from failed ones), and its
    queue's pause if it is paused."""
    rows = await con.fetch(
        """SELECT f.flow_slug, f.opt_max_attempts, f.opt_base_delay, f.opt_timeout, f.created_at,
                  coalesce((SELECT array_agg(s.step_slug ORDER BY s.step_index) FROM pgflow.steps s
                            WHERE s.flow_slug = f.flow_slug), '{}') AS steps,
                  coalesce((SELECT jsonb_object_agg(state, n) FROM (
                                SELECT CASE WHEN c.run_id IS NULL THEN r.status ELSE 'cancelled' END AS state,
                                       count(*) AS n
                                FROM pgflow.runs r LEFT JOIN pgflow_trio.run_cancellations c USING (run_id)
                                WHERE r.flow_slug = f.flow_slug GROUP BY 1) c), '{}')::text AS runs,
                  p.paused_at, p.reason AS pause_reason
           FROM pgflow.flows f LEFT JOIN pgflow_trio.queue_pauses p ON p.queue = f.flow_slug
           ORDER BY f.flow_slug"""
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
            paused=None if r["paused_at"] is None else QueuePause(r["paused_at"], r["pause_reason"]),
        )
        for r in rows
    ]


async def create_flow(con: RawConnection, *, flow: FlowDef) -> None:
    """Create `flow` with the statements the compiler makes of it (in the caller's transaction)."""
    for statement in compile_flow(flow):
        await con.execute(statement)


async def _delete_rows(con: RawConnection, slug: str) -> dict[str, int]:
    counts = {}
    for table in ("step_tasks", "step_states", "runs", "deps", "steps"):
        status = await con.execute(f"DELETE FROM pgflow.{table} WHERE flow_slug = $1", slug)
        counts[table] = int(status.split()[-1])
    await con.execute("DELETE FROM pgflow.workers WHERE queue_name = $1", slug)
    await con.execute("DELETE FROM pgflow.flows WHERE flow_slug = $1", slug)
    if await con.fetchval("SELECT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = $1)", slug):
        await con.execute("SELECT pgmq.drop_queue($1)", slug)
    return counts


async def delete_flow(con: RawConnection, *, slug: str, force: bool, stale_after: float) -> dict[str, int]:
    """Delete a flow with its runs, tasks, queue and the queue's pause, in one transaction; returns how many rows
    went per table. FlowNotFound when absent; FlowInUse while live workers serve it, unless `force`."""
    async with con.transaction():
        await lock_flow(con, slug=slug)
        if not await flow_exists(con, slug=slug):
            raise FlowNotFound(f"there is no flow {slug!r} in the database")
        live = await live_workers(con, queue=slug, stale_after=stale_after)
        if live and not force:
            raise FlowInUse(
                f"{live} live worker(s) serve flow {slug!r}: stop them first, or delete anyway with force=True "
                f"(CLI: --force); their tasks would fail"
            )
        counts = await _delete_rows(con, slug)
        await con.execute("DELETE FROM pgflow_trio.queue_pauses WHERE queue = $1", slug)
        return counts


async def upsert_flow(
    con: RawConnection, *, flow: FlowDef, force: bool, stale_after: float
) -> tuple[UpsertOutcome, dict[str, int]]:
    """Create the flow, or replace a different one of the same slug, in one transaction. Returns the outcome and,
    when replaced, how many rows went per table. Replacing DELETES the old flow's runs and tasks."""
    async with con.transaction():
        await lock_flow(con, slug=flow.slug)
        stored = await read_flow(con, slug=flow.slug)
        outcome: UpsertOutcome = "created"
        deleted: dict[str, int] = {}
        if stored is not None:
            if not flow_differences(flow, stored):
                return "unchanged", deleted
            live = await live_workers(con, queue=flow.slug, stale_after=stale_after)
            if live and not force:
                raise FlowInUse(f"{live} live worker(s) serve flow {flow.slug!r}: stop them or pass force=True")
            deleted = await _delete_rows(con, flow.slug)
            outcome = "replaced"
        await create_flow(con, flow=flow)
        return outcome, deleted
