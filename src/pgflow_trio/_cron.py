"""Running cron schedules: pg_cron where the server has it, else a scheduler of our own inside workers.

Both fire through `pgflow_trio.fire_schedule(name, tick)`, which records the tick in the same transaction that
starts the run, so a tick fires at most once however many schedulers run. The built-in scheduler is elected with
a PostgreSQL advisory lock held on a dedicated connection; its successor fires the ticks the old leader missed
within `grace` seconds; older missed ticks follow the schedule's catch-up policy (skip, or fire once).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

import asyncpg
import attrs
import trio

from ._db import Database
from ._definition import DefinitionError, FlowDef
from ._errors import PgflowError
from ._schedule import ScheduleDef, next_ticks, ticks_between

log = logging.getLogger("pgflow_trio.cron")

Backend = Literal["auto", "builtin", "pg_cron"]
LEADER_LOCK = 7_301_946_210_553_118_002
JOB_PREFIX = "pgflow_trio:"


@attrs.frozen
class SyncReport:
    backend: str
    created: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]


async def pg_cron_version(db: Database) -> str | None:
    version: str | None = await db.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
    return version


async def choose_backend(cron_db: Database, backend: Backend) -> Literal["builtin", "pg_cron"]:
    if backend != "auto":
        if backend == "pg_cron" and await pg_cron_version(cron_db) is None:
            raise DefinitionError("pg_cron is not installed in that database: CREATE EXTENSION pg_cron, or use builtin")
        return backend
    return "pg_cron" if await pg_cron_version(cron_db) is not None else "builtin"


def _check_for_pg_cron(schedule: ScheduleDef) -> None:
    if schedule.has_seconds:
        raise DefinitionError(
            f"schedule {schedule.name}: six-field (seconds) schedules need the built-in scheduler (--backend builtin)"
        )
    if schedule.timezone != "UTC":
        raise DefinitionError(
            f"schedule {schedule.name}: pg_cron runs schedules in UTC; use timezone='UTC' or the built-in scheduler"
        )


async def sync_schedules(
    db: Database,
    flows: Sequence[FlowDef],
    *,
    backend: Backend = "auto",
    cron_db: Database | None = None,
    prune: bool = False,
) -> SyncReport:
    """Make the database's schedules match the code's for `flows` (and, with `prune`, remove every other).

    `cron_db` is the database where pg_cron is installed (its `cron.database_name`; default: `db`); jobs run in
    `db` through `cron.schedule_in_database`."""
    cron_db = cron_db or db
    chosen = await choose_backend(cron_db, backend)
    desired = {s.name: s for flow in flows for s in flow.schedules}
    if chosen == "pg_cron":
        for schedule in desired.values():
            _check_for_pg_cron(schedule)
    slugs = [flow.slug for flow in flows]
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    async with db.transaction() as tx:
        await tx.execute("SELECT pg_advisory_xact_lock($1)", LEADER_LOCK + 1)
        rows = await tx.fetch(
            "SELECT name, flow_slug, expression, timezone, input::text AS input, catch_up, backend "
            "FROM pgflow_trio.schedules WHERE flow_slug = ANY($1::text[]) OR $2",
            slugs,
            prune,
        )
        existing = {r["name"]: r for r in rows}
        removed = [name for name in existing if name not in desired]
        for name in removed:
            await tx.execute("DELETE FROM pgflow_trio.schedules WHERE name = $1", name)
        for name, s in desired.items():
            row = existing.get(name)
            fields = (s.flow_slug, s.expression, s.timezone, json.dumps(s.input), s.catch_up, chosen)
            if row is None:
                await tx.execute(
                    "INSERT INTO pgflow_trio.schedules "
                    "(name, flow_slug, expression, timezone, input, catch_up, backend) "
                    "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)",
                    name,
                    *fields,
                )
                created.append(name)
            elif (
                row["flow_slug"],
                row["expression"],
                row["timezone"],
                json.loads(row["input"]),
                row["catch_up"],
                row["backend"],
            ) != (s.flow_slug, s.expression, s.timezone, s.input, s.catch_up, chosen):
                await tx.execute(
                    "UPDATE pgflow_trio.schedules SET flow_slug = $2, expression = $3, timezone = $4, "
                    "input = $5::jsonb, catch_up = $6, backend = $7, updated_at = clock_timestamp() WHERE name = $1",
                    name,
                    *fields,
                )
                updated.append(name)
            else:
                unchanged.append(name)
    if await pg_cron_version(cron_db) is not None:
        await _sync_pg_cron_jobs(db, cron_db, desired if chosen == "pg_cron" else {}, removed, prune)
    return SyncReport(chosen, tuple(created), tuple(updated), tuple(removed), tuple(unchanged))


async def _sync_pg_cron_jobs(
    db: Database, cron_db: Database, desired: dict[str, ScheduleDef], removed: list[str], prune: bool
) -> None:
    database = await db.fetchval("SELECT current_database()")
    ours = await cron_db.fetch(
        "SELECT jobid, jobname, schedule, command FROM cron.job WHERE jobname LIKE $1 AND database = $2",
        JOB_PREFIX + "%",
        database,
    )
    current = {r["jobname"]: r for r in ours}
    stale = [job for job in current if job.removeprefix(JOB_PREFIX) in removed]
    if prune:
        stale += [job for job in current if job.removeprefix(JOB_PREFIX) not in desired and job not in stale]
    for job_name in stale:
        await cron_db.execute("SELECT cron.unschedule($1::bigint)", current[job_name]["jobid"])
    for name, schedule in desired.items():
        # The command only names the schedule, quoted by PostgreSQL itself (format %L); the input stays in a table.
        command = await cron_db.fetchval("SELECT format('SELECT pgflow_trio.fire_schedule(%L)', $1::text)", name)
        job = current.get(JOB_PREFIX + name)
        if job is not None and job["schedule"] == schedule.five_field and job["command"] == command:
            continue
        await cron_db.execute(
            "SELECT cron.schedule_in_database($1, $2, $3, $4)",
            JOB_PREFIX + name,
            schedule.five_field,
            command,
            database,
        )


def _definition_from_row(row: Any) -> ScheduleDef:
    expression = row["expression"]
    return ScheduleDef(
        name=row["name"],
        flow_slug=row["flow_slug"],
        expression=expression,
        input=None,
        timezone=row["timezone"],
        catch_up=row["catch_up"],
        has_seconds=not expression.startswith("@") and len(expression.split()) == 6,
    )


async def fire_due(db: Database, *, grace: float) -> float | None:
    """Fire every built-in schedule's due ticks once; returns seconds until the next tick (None: no schedules)."""
    rows = await db.fetch(
        "SELECT name, flow_slug, expression, timezone, catch_up, coalesce(last_tick, created_at) AS since, "
        "clock_timestamp() AS now FROM pgflow_trio.schedules WHERE backend = 'builtin'"
    )
    soonest: float | None = None
    for row in rows:
        schedule = _definition_from_row(row)
        now: datetime.datetime = row["now"]
        ticks = ticks_between(schedule, row["since"], now)
        recent = [t for t in ticks if (now - t).total_seconds() <= grace]
        missed = [t for t in ticks if (now - t).total_seconds() > grace]
        fire = list(recent)
        if missed and schedule.catch_up == "once" and not recent:
            fire.insert(0, missed[-1])
        for tick in fire:
            run_id = await db.fetchval("SELECT pgflow_trio.fire_schedule($1, $2)", schedule.name, tick)
            if run_id is not None:
                log.info("schedule %s fired tick %s: run %s", schedule.name, tick.isoformat(), run_id)
        if missed and not fire:
            log.warning("schedule %s skipped %d missed tick(s) (catch_up=skip)", schedule.name, len(missed))
            await db.execute(
                "UPDATE pgflow_trio.schedules SET last_tick = greatest(last_tick, $2) WHERE name = $1",
                schedule.name,
                missed[-1],
            )
        upcoming = next_ticks(schedule, now, 1)
        if upcoming:
            wait = (upcoming[0] - now).total_seconds()
            soonest = wait if soonest is None else min(soonest, wait)
    return soonest


class Scheduler:
    """The built-in scheduler. Run it in every worker process: one of them leads (advisory lock) and fires."""

    def __init__(self, db: Database, *, interval: float = 1.0, grace: float = 60.0) -> None:
        self.db = db
        self.interval = interval
        self.grace = grace
        self.leading = False
        self.terms = 0

    async def run(self, *, task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        while True:
            try:
                await self._campaign()
            except PgflowError as exc:
                log.warning("scheduler: %s; retrying", exc)
            self.leading = False
            await trio.sleep(self.interval)

    async def _campaign(self) -> None:
        """Hold the leader lock on a dedicated connection while firing; return when the connection is lost."""
        lost = trio.Event()

        async def connect() -> asyncpg.Connection[asyncpg.Record]:
            con = await asyncpg.connect(self.db.dsn)
            con.add_termination_listener(lambda _c: lost.set())
            return con

        con = await self.db._cross(connect())
        try:
            while not lost.is_set():
                got = await self.db._cross(con.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK))
                if got:
                    break
                await trio.sleep(self.interval)
            else:
                return
            self.leading = True
            self.terms += 1
            log.info("scheduler: leading")
            while not lost.is_set():
                wait = await fire_due(self.db, grace=self.grace)
                pause = self.interval if wait is None else min(self.interval, max(wait, 0.0) + 0.002)
                with trio.move_on_after(pause):
                    await lost.wait()
                # A cheap check that the lock's session is still there (the termination listener may lag).
                await self.db._cross(con.fetchval("SELECT 1"))
        finally:
            con.terminate()


@attrs.frozen
class ScheduleStatus:
    name: str
    flow_slug: str
    backend: str
    expression: str
    timezone: str
    catch_up: str
    next_ticks: tuple[datetime.datetime, ...]
    last_tick: datetime.datetime | None
    last_run_id: Any
    last_run_status: str | None
    drift: tuple[str, ...]


async def list_schedules(db: Database, flows: Sequence[FlowDef] = (), count: int = 3) -> list[ScheduleStatus]:
    """Every schedule in the database with its next ticks and last run, plus drift against `flows`' code."""
    rows = await db.fetch(
        """SELECT s.name, s.flow_slug, s.expression, s.timezone, s.catch_up, s.backend, s.input::text AS input,
                  clock_timestamp() AS now, t.tick AS last_tick, t.run_id AS last_run_id, r.status AS last_status
           FROM pgflow_trio.schedules s
           LEFT JOIN LATERAL (SELECT tick, run_id FROM pgflow_trio.cron_ticks c WHERE c.schedule_name = s.name
                              ORDER BY tick DESC LIMIT 1) t ON TRUE
           LEFT JOIN pgflow.runs r ON r.run_id = t.run_id
           ORDER BY s.name"""
    )
    code = {s.name: s for flow in flows for s in flow.schedules}
    in_code_flows = {flow.slug for flow in flows}
    out = []
    seen = set()
    for row in rows:
        schedule = _definition_from_row(row)
        drift: list[str] = []
        mine = code.get(row["name"])
        seen.add(row["name"])
        if mine is not None:
            for what, ours, theirs in (
                ("expression", mine.expression, row["expression"]),
                ("timezone", mine.timezone, row["timezone"]),
                ("catch_up", mine.catch_up, row["catch_up"]),
                ("input", mine.input, json.loads(row["input"])),
            ):
                if ours != theirs:
                    drift.append(f"{what}: {ours!r} in code, {theirs!r} in the database")
        elif row["flow_slug"] in in_code_flows:
            drift.append("not in the code any more (cron sync removes it)")
        out.append(
            ScheduleStatus(
                row["name"],
                row["flow_slug"],
                row["backend"],
                row["expression"],
                row["timezone"],
                row["catch_up"],
                tuple(next_ticks(schedule, row["now"], count)),
                row["last_tick"],
                row["last_run_id"],
                row["last_status"],
                tuple(drift),
            )
        )
    for name, mine in code.items():
        if name not in seen:
            out.append(
                ScheduleStatus(
                    name,
                    mine.flow_slug,
                    "-",
                    mine.expression,
                    mine.timezone,
                    mine.catch_up,
                    (),
                    None,
                    None,
                    None,
                    ("in the code but not in the database (run cron sync)",),
                )
            )
    return out
