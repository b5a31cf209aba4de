"""Running cron schedules: each on pg_cron where the server has it and pg_cron can express it, else on a scheduler
of our own inside workers.

Both fire through `pgflow_trio.fire_schedule(name, tick)`, which records the tick in the same transaction that
starts the run, so a tick fires at most once however many schedulers run. A schedule belongs to its flow: it fires
only while the flow exists and some live worker (any language) serves it (`pgflow_trio.flow_is_served`); others
are orphans, which `list_schedules` reports and `remove_schedule` removes. The built-in scheduler is elected with a
PostgreSQL advisory lock held on a dedicated connection; its successor fires the ticks the old leader missed within
`grace` seconds, and so does a scheduler when a flow's worker comes back; older missed ticks follow the schedule's
catch-up policy (skip, or fire once).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import trio

from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._definitions._schedule import ScheduleDef, next_ticks, ticks_between
from pgflow_trio._exceptions import PgflowError, ScheduleNotFound
from pgflow_trio._store import Database

log = logging.getLogger("pgflow_trio.cron")

Backend = Literal["auto", "builtin", "pg_cron"]
LEADER_LOCK = 7_301_946_210_553_118_002
JOB_PREFIX = "pgflow_trio:"


@attrs.frozen
class SyncReport:
    """What `sync_schedules` changed, and which backend each schedule of the given flows runs on."""

    backend: str
    """`builtin`, `pg_cron`, or `pg_cron+builtin` when the schedules went to both."""
    created: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]
    backends: dict[str, str] = attrs.field(factory=dict, hash=False)
    """Schedule name -> `builtin` or `pg_cron`."""
    warnings: tuple[str, ...] = ()
    """Why a schedule did not get the backend that was asked for (also logged, one line each)."""


async def pg_cron_version(db: Database) -> str | None:
    version: str | None = await db.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
    return version


_UTC_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu", "GMT", "Etc/GMT"})
_PG_CRON_TOKEN = re.compile(r"^(\*|[0-9]+|[A-Za-z]{3})$")


def pg_cron_problem(schedule: ScheduleDef) -> str | None:
    """Why pg_cron cannot run `schedule` as written (None: it can). pg_cron takes five fields (numbers, names,
    `*`, lists, ranges, steps) and runs in UTC."""
    if schedule.has_seconds:
        return "it has a seconds field"
    if schedule.timezone not in _UTC_ZONES:
        return f"it follows time zone {schedule.timezone} and pg_cron runs in UTC"
    for field in schedule.five_field.split():
        for token in re.split(r"[,/-]", field):
            if not _PG_CRON_TOKEN.match(token):
                return f"pg_cron does not understand {field!r}"
    return None


def backend_for(
    schedule: ScheduleDef, preference: Backend, pg_cron_installed: bool
) -> tuple[Literal["builtin", "pg_cron"], str | None]:
    """The backend a schedule gets, with a warning when an explicit `pg_cron` preference cannot be honoured.

    `auto`: pg_cron when it is installed and can express the schedule, else the built-in scheduler. `builtin`:
    always the built-in one. `pg_cron`: pg_cron, falling back to the built-in scheduler (with a warning) for what
    it cannot run: workers never refuse to serve a flow because of how its schedules run."""
    if preference == "builtin":
        return "builtin", None
    problem = "pg_cron is not installed" if not pg_cron_installed else pg_cron_problem(schedule)
    if problem is None:
        return "pg_cron", None
    if preference == "auto":
        return "builtin", None
    return "builtin", f"schedule {schedule.name}: {problem}; it runs on the built-in scheduler"


async def choose_backend(cron_db: Database, backend: Backend) -> Literal["builtin", "pg_cron"]:
    """The backend a plain five-field UTC schedule would get (what `auto` means on this database)."""
    if backend == "builtin":
        return "builtin"
    return "pg_cron" if await pg_cron_version(cron_db) is not None else "builtin"


def _summary(backends: dict[str, str], default: str) -> str:
    used = set(backends.values())
    if len(used) == 2:
        return "pg_cron+builtin"
    return used.pop() if used else default


async def sync_schedules(
    db: Database,
    flows: Sequence[FlowDef],
    *,
    backend: Backend = "auto",
    cron_db: Database | None = None,
    prune: bool = False,
) -> SyncReport:
    """Make the database's schedules match the code's for `flows` (and, with `prune`, remove every other).

    Each schedule gets its own backend (`backend_for`). `cron_db` is the database where pg_cron is installed (its
    `cron.database_name`; default: `db`); jobs run in `db` through `cron.schedule_in_database`."""
    cron_db = cron_db or db
    installed = await pg_cron_version(cron_db) is not None
    desired = {s.name: s for flow in flows for s in flow.schedules}
    backends: dict[str, str] = {}
    warnings: list[str] = []
    for name, schedule in desired.items():
        backends[name], warning = backend_for(schedule, backend, installed)
        if warning is not None:
            log.warning("%s", warning)
            warnings.append(warning)
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
            chosen = backends[name]
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
    if installed:
        on_pg_cron = {name: s for name, s in desired.items() if backends[name] == "pg_cron"}
        not_on_pg_cron = set(removed) | {name for name in desired if name not in on_pg_cron}
        await _sync_pg_cron_jobs(db, cron_db, on_pg_cron, not_on_pg_cron, prune)
    default = "pg_cron" if installed and backend != "builtin" else "builtin"
    return SyncReport(
        _summary(backends, default),
        tuple(created),
        tuple(updated),
        tuple(removed),
        tuple(unchanged),
        backends,
        tuple(warnings),
    )


async def _sync_pg_cron_jobs(
    db: Database, cron_db: Database, desired: dict[str, ScheduleDef], unwanted: set[str], prune: bool
) -> None:
    """Create or update the pg_cron jobs of `desired`; unschedule those of `unwanted` (and with `prune`, every job
    of ours that is not desired)."""
    database = await db.fetchval("SELECT current_database()")
    ours = await cron_db.fetch(
        "SELECT jobid, jobname, schedule, command FROM cron.job WHERE jobname LIKE $1 AND database = $2",
        JOB_PREFIX + "%",
        database,
    )
    current = {r["jobname"]: r for r in ours}
    stale = [
        job
        for job in current
        if job.removeprefix(JOB_PREFIX) in unwanted or (prune and job.removeprefix(JOB_PREFIX) not in desired)
    ]
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


async def remove_schedule(db: Database, name: str, *, cron_db: Database | None = None) -> bool:
    """Remove schedule `name`: its row, its recorded ticks, and its pg_cron job if it has one (in `cron_db`,
    default `db`). Returns whether a pg_cron job was removed too; raises ScheduleNotFound, listing the schedules
    that exist, when there is neither a schedule nor a job of that name."""
    cron_db = cron_db or db
    async with db.transaction() as tx:
        await tx.execute("SELECT pg_advisory_xact_lock($1)", LEADER_LOCK + 1)
        removed_row = await tx.fetchval("DELETE FROM pgflow_trio.schedules WHERE name = $1 RETURNING true", name)
        others = [r["name"] for r in await tx.fetch("SELECT name FROM pgflow_trio.schedules ORDER BY name")]
    removed_job = False
    if await pg_cron_version(cron_db) is not None:
        database = await db.fetchval("SELECT current_database()")
        jobid = await cron_db.fetchval(
            "SELECT jobid FROM cron.job WHERE jobname = $1 AND database = $2", JOB_PREFIX + name, database
        )
        if jobid is not None:
            await cron_db.execute("SELECT cron.unschedule($1::bigint)", jobid)
            removed_job = True
    if not removed_row and not removed_job:
        existing = f"the schedules are: {', '.join(others)}" if others else "there are no schedules"
        raise ScheduleNotFound(f"there is no schedule {name!r}; {existing} (python -m pgflow_trio cron list)")
    return removed_job


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
    """Fire the due ticks of every built-in schedule whose flow a live worker serves; returns seconds until the
    next tick (None: no such schedules). Unserved schedules are not even looked at: their ticks wait, unrecorded,
    until a worker is back (then they are missed ticks like any other)."""
    rows = await db.fetch(
        "SELECT name, flow_slug, expression, timezone, catch_up, coalesce(last_tick, created_at) AS since, "
        "clock_timestamp() AS now FROM pgflow_trio.schedules "
        "WHERE backend = 'builtin' AND pgflow_trio.flow_is_served(flow_slug)"
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
        """Hold the leader lock on a dedicated session while firing; return when the session is lost."""
        async with self.db.dedicated_session() as session:
            while not session.lost.is_set():
                got = await session.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK)
                if got:
                    break
                await trio.sleep(self.interval)
            else:
                return
            self.leading = True
            self.terms += 1
            log.info("scheduler: leading")
            while not session.lost.is_set():
                wait = await fire_due(self.db, grace=self.grace)
                pause = self.interval if wait is None else min(self.interval, max(wait, 0.0) + 0.002)
                with trio.move_on_after(pause):
                    await session.lost.wait()
                # A cheap check that the lock's session is still there (the termination listener may lag).
                await session.fetchval("SELECT 1")


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
    orphan: str | None = None
    """Why the schedule fires nothing now (its flow is gone, or no live worker serves it); None when it fires."""


def _ago(age: datetime.timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _orphan_reason(row: Any) -> str | None:
    slug = row["flow_slug"]
    if not row["flow_exists"]:
        return f"flow {slug!r} is not in the database"
    if row["served"]:
        return None
    seen = row["last_seen"]
    when = f"last worker seen {_ago(row['now'] - seen)} ago" if seen is not None else "no worker ever registered"
    return f"no live worker serves flow {slug!r} ({when})"


async def list_schedules(db: Database, flows: Sequence[FlowDef] = (), count: int = 3) -> list[ScheduleStatus]:
    """Every schedule in the database with its next ticks and last run, drift against `flows`' code, and why it
    is an orphan (firing nothing) if it is one."""
    rows = await db.fetch(
        """SELECT s.name, s.flow_slug, s.expression, s.timezone, s.catch_up, s.backend, s.input::text AS input,
                  clock_timestamp() AS now, t.tick AS last_tick, t.run_id AS last_run_id, r.status AS last_status,
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
                _orphan_reason(row),
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
