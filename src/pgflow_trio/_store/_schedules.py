"""Cron schedules in the database: `pgflow_trio.schedules` and its recorded ticks, and pg_cron's `cron.job` rows.
Each function is one unit of work run inside asyncio on one connection (`Database.run(functools.partial(...))`)."""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs

from pgflow_trio._definitions._schedule import ScheduleDef
from pgflow_trio._store import DedicatedSession, RawConnection, Record

JOB_PREFIX = "pgflow_trio:"
SYNC_LOCK = 7_301_946_210_553_118_003
"""Serializes changes to the schedules table (the scheduler's leader lock + 1)."""


@attrs.frozen
class ScheduleChanges:
    """What `sync_schedule_rows` did to the schedules table, by schedule name."""

    created: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]
    paused: frozenset[str] = frozenset()
    """The schedules (of those kept) that are paused: their pg_cron jobs stay inactive."""


@attrs.frozen
class ScheduleRemoval:
    """Whether `delete_schedule` removed a row, and the names of the schedules left."""

    removed: bool
    others: tuple[str, ...]


@attrs.frozen
class DueSchedule:
    """A schedule whose flow a live worker serves, as one scheduler pass sees it."""

    schedule: ScheduleDef
    backend: str
    since: datetime.datetime
    """The last tick fired or skipped, else the schedule's creation: its unfired ticks come after it."""
    window_from: datetime.datetime
    """Where a pg_cron-backed schedule's ticks are listed from: its creation, or its last resume (the ticks before
    that were settled then)."""
    now: datetime.datetime
    recorded: frozenset[datetime.datetime]
    """The ticks already recorded in the recent past asked for (`recent` seconds)."""


@attrs.frozen
class StoredSchedule:
    """A schedule as the database holds it, with its last tick and whether it can fire."""

    schedule: ScheduleDef
    """Its definition (`input` is the stored JSON input)."""
    backend: str
    now: datetime.datetime
    last_tick: datetime.datetime | None
    last_run_id: uuid.UUID | None
    last_run_status: str | None
    flow_exists: bool
    served: bool
    last_seen: datetime.datetime | None
    """The latest heartbeat of any worker ever registered for the flow."""
    paused_at: datetime.datetime | None = None


def _definition(row: Record, input: Any = None) -> ScheduleDef:
    expression: str = row["expression"]
    return ScheduleDef(
        name=row["name"],
        flow_slug=row["flow_slug"],
        expression=expression,
        input=input,
        timezone=row["timezone"],
        catch_up=row["catch_up"],
        has_seconds=not expression.startswith("@") and len(expression.split()) == 6,
    )


async def pg_cron_version(con: RawConnection) -> str | None:
    """The installed pg_cron extension's version, or None."""
    version: str | None = await con.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
    return version


async def current_database(con: RawConnection) -> str:
    name: str = await con.fetchval("SELECT current_database()")
    return name


async def sync_schedule_rows(
    con: RawConnection,
    *,
    desired: Mapping[str, tuple[ScheduleDef, str]],
    flow_slugs: Sequence[str],
    prune: bool,
) -> ScheduleChanges:
    """Make the schedules of `flow_slugs` (with `prune`: every schedule) match `desired` (name -> (schedule,
    backend)), in one transaction."""
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", SYNC_LOCK)
        rows = await con.fetch(
            "SELECT name, flow_slug, expression, timezone, input::text AS input, catch_up, backend, paused_at "
            "FROM pgflow_trio.schedules WHERE flow_slug = ANY($1::text[]) OR $2",
            list(flow_slugs),
            prune,
        )
        existing = {r["name"]: r for r in rows}
        removed = [name for name in existing if name not in desired]
        for name in removed:
            await con.execute("DELETE FROM pgflow_trio.schedules WHERE name = $1", name)
        for name, (s, backend) in desired.items():
            row = existing.get(name)
            fields = (s.flow_slug, s.expression, s.timezone, json.dumps(s.input), s.catch_up, backend)
            if row is None:
                await con.execute(
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
            ) != (s.flow_slug, s.expression, s.timezone, s.input, s.catch_up, backend):
                await con.execute(
                    "UPDATE pgflow_trio.schedules SET flow_slug = $2, expression = $3, timezone = $4, "
                    "input = $5::jsonb, catch_up = $6, backend = $7, updated_at = clock_timestamp() WHERE name = $1",
                    name,
                    *fields,
                )
                updated.append(name)
            else:
                unchanged.append(name)
    paused = frozenset(name for name, row in existing.items() if name in desired and row["paused_at"] is not None)
    return ScheduleChanges(tuple(created), tuple(updated), tuple(removed), tuple(unchanged), paused)


async def sync_pg_cron_jobs(
    con: RawConnection,
    *,
    database: str,
    desired: Mapping[str, str],
    unwanted: Collection[str],
    prune: bool,
    paused: Collection[str] = (),
) -> None:
    """On the pg_cron database: create or update the jobs of `desired` (schedule name -> five-field expression)
    that run in `database`, inactive for the schedules in `paused`; unschedule those of `unwanted` (and with
    `prune`, every job of ours not desired)."""
    ours = await con.fetch(
        "SELECT jobid, jobname, schedule, command, active FROM cron.job WHERE jobname LIKE $1 AND database = $2",
        JOB_PREFIX + "%",
        database,
    )
    current = {r["jobname"]: r for r in ours}
    for job_name, job in current.items():
        name = job_name.removeprefix(JOB_PREFIX)
        if name in unwanted or (prune and name not in desired):
            await con.execute("SELECT cron.unschedule($1::bigint)", job["jobid"])
    for name, expression in desired.items():
        # The command only names the schedule, quoted by PostgreSQL itself (format %L); the input stays in a table.
        command = await con.fetchval("SELECT format('SELECT pgflow_trio.fire_schedule(%L)', $1::text)", name)
        existing = current.get(JOB_PREFIX + name)
        active = name not in paused
        if existing is not None and existing["schedule"] == expression and existing["command"] == command:
            if existing["active"] != active:
                await con.execute("SELECT cron.alter_job($1::bigint, active => $2)", existing["jobid"], active)
            continue
        await con.execute(
            "SELECT cron.schedule_in_database($1, $2, $3, $4, NULL, $5)",
            JOB_PREFIX + name,
            expression,
            command,
            database,
            active,
        )


async def delete_schedule(con: RawConnection, *, name: str) -> ScheduleRemoval:
    """Delete schedule `name` (its ticks go with it), in one transaction; says whether it existed."""
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", SYNC_LOCK)
        removed = await con.fetchval("DELETE FROM pgflow_trio.schedules WHERE name = $1 RETURNING true", name)
        others = [r["name"] for r in await con.fetch("SELECT name FROM pgflow_trio.schedules ORDER BY name")]
    return ScheduleRemoval(bool(removed), tuple(others))


async def delete_pg_cron_job(con: RawConnection, *, name: str, database: str) -> bool:
    """On the pg_cron database: unschedule the job of schedule `name` that runs in `database`, if there is one."""
    jobid = await con.fetchval(
        "SELECT jobid FROM cron.job WHERE jobname = $1 AND database = $2", JOB_PREFIX + name, database
    )
    if jobid is None:
        return False
    await con.execute("SELECT cron.unschedule($1::bigint)", jobid)
    return True


async def due_schedules(con: RawConnection, *, recent: float) -> list[DueSchedule]:
    """Every schedule (either backend) not paused whose flow a live worker serves, with the instant its unfired
    ticks start after and the ticks recorded within the last `recent` seconds."""
    rows = await con.fetch(
        "SELECT s.name, s.flow_slug, s.expression, s.timezone, s.catch_up, s.backend, "
        "coalesce(s.last_tick, s.created_at) AS since, greatest(s.created_at, s.resumed_at) AS window_from, "
        "clock_timestamp() AS now, "
        "ARRAY(SELECT c.tick FROM pgflow_trio.cron_ticks c WHERE c.schedule_name = s.name "
        "      AND c.tick > clock_timestamp() - make_interval(secs => $1)) AS recorded "
        "FROM pgflow_trio.schedules s WHERE s.paused_at IS NULL AND pgflow_trio.flow_is_served(s.flow_slug)",
        recent,
    )
    return [
        DueSchedule(_definition(r), r["backend"], r["since"], r["window_from"], r["now"], frozenset(r["recorded"]))
        for r in rows
    ]


async def fire_schedule(con: RawConnection, *, name: str, tick: datetime.datetime) -> uuid.UUID | None:
    """Fire one tick (recorded in the transaction that starts the run); the run's id, or None when the tick had
    already fired or the schedule cannot fire."""
    run_id: uuid.UUID | None = await con.fetchval("SELECT pgflow_trio.fire_schedule($1, $2)", name, tick)
    return run_id


async def skip_ticks(con: RawConnection, *, name: str, until: datetime.datetime) -> None:
    """Record that the ticks of schedule `name` up to `until` will not fire."""
    await con.execute(
        "UPDATE pgflow_trio.schedules SET last_tick = greatest(last_tick, $2) WHERE name = $1", name, until
    )


async def stored_schedules(con: RawConnection) -> list[StoredSchedule]:
    """Every schedule with its last tick and run, whether its flow exists and is served, its last worker, and
    since when it is paused."""
    rows = await con.fetch(
        """SELECT s.name, s.flow_slug, s.expression, s.timezone, s.catch_up, s.backend, s.input::text AS input,
                  s.paused_at, clock_timestamp() AS now, t.tick AS last_tick, t.run_id AS last_run_id,
                  r.status AS last_status,
                  EXISTS (SELECT 1 FROM pgflow.flows f WHERE f.flow_slug = s.flow_slug) AS flow_exists,
                  pgflow_trio.flow_is_served(s.flow_slug) AS served,
                  (SELECT max(w.last_heartbeat_at) FROM pgflow.workers w WHERE w.queue_name = s.flow_slug)
                    AS last_seen
           FROM pgflow_trio.schedules s
           LEFT JOIN LATERAL (SELECT tick, run_id FROM pgflow_trio.cron_ticks c WHERE c.schedule_name = s.name
                              ORDER BY tick DESC LIMIT 1) t ON TRUE
           LEFT JOIN pgflow.runs r ON r.run_id = t.run_id
           ORDER BY s.name"""
    )
    return [
        StoredSchedule(
            schedule=_definition(r, json.loads(r["input"])),
            backend=r["backend"],
            now=r["now"],
            last_tick=r["last_tick"],
            last_run_id=r["last_run_id"],
            last_run_status=r["last_status"],
            flow_exists=r["flow_exists"],
            served=r["served"],
            last_seen=r["last_seen"],
            paused_at=r["paused_at"],
        )
        for r in rows
    ]


async def schedule_names(con: RawConnection) -> list[str]:
    """The names of every schedule, sorted."""
    return [r["name"] for r in await con.fetch("SELECT name FROM pgflow_trio.schedules ORDER BY name")]


@attrs.frozen
class SchedulePause:
    """A paused schedule: since when, and its backend."""

    paused_at: datetime.datetime
    backend: str


async def pause_schedule_row(con: RawConnection, *, name: str) -> SchedulePause | None:
    """Pause schedule `name` (a second pause keeps the first instant); None when there is no such schedule."""
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", SYNC_LOCK)
        row = await con.fetchrow(
            "UPDATE pgflow_trio.schedules SET paused_at = coalesce(paused_at, clock_timestamp()) WHERE name = $1 "
            "RETURNING paused_at, backend",
            name,
        )
    return None if row is None else SchedulePause(row["paused_at"], row["backend"])


Settle = Callable[[ScheduleDef, datetime.datetime, datetime.datetime], datetime.datetime]
"""(schedule, since, now) -> the instant up to which the ticks missed while paused are settled on resume."""


@attrs.frozen
class ScheduleResume:
    """What resuming a schedule did: whether it was paused, its backend, and up to when its ticks were settled."""

    was_paused: bool
    backend: str
    settled_to: datetime.datetime | None


async def resume_schedule_row(con: RawConnection, *, name: str, settle: Settle) -> ScheduleResume | None:
    """Resume schedule `name`, settling the ticks it missed while paused up to `settle(schedule, since, now)`:
    they count as fired or skipped, and the scheduler handles any later one (`since` is its last tick fired or
    skipped, else its creation; `now` the database clock). None when there is no such schedule."""
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", SYNC_LOCK)
        row = await con.fetchrow(
            "SELECT name, flow_slug, expression, timezone, catch_up, backend, paused_at, "
            "coalesce(last_tick, created_at) AS since, clock_timestamp() AS now "
            "FROM pgflow_trio.schedules WHERE name = $1 FOR UPDATE",
            name,
        )
        if row is None:
            return None
        if row["paused_at"] is None:
            return ScheduleResume(False, row["backend"], None)
        settled_to = settle(_definition(row), row["since"], row["now"])
        await con.execute(
            "UPDATE pgflow_trio.schedules SET paused_at = NULL, resumed_at = $2, "
            "last_tick = greatest(last_tick, $2) WHERE name = $1",
            name,
            settled_to,
        )
    return ScheduleResume(True, row["backend"], settled_to)


async def set_pg_cron_job_active(con: RawConnection, *, name: str, database: str, active: bool) -> bool:
    """On the pg_cron database: (de)activate the job of schedule `name` that runs in `database`; whether there is
    one."""
    jobid = await con.fetchval(
        "SELECT jobid FROM cron.job WHERE jobname = $1 AND database = $2", JOB_PREFIX + name, database
    )
    if jobid is None:
        return False
    await con.execute("SELECT cron.alter_job($1::bigint, active => $2)", jobid, active)
    return True


async def try_lead(session: DedicatedSession, key: int) -> bool:
    """Take the built-in scheduler's leader lock on its dedicated session if it is free. The lock is session-level:
    it is held until the session ends, so a leader that dies (or loses its connection) frees it at once."""
    return bool(await session.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def check_session(session: DedicatedSession) -> None:
    """A cheap round trip proving the leader's session (and so its lock) is still there."""
    await session.fetchval("SELECT 1")
