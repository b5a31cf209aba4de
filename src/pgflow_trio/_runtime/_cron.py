"""Running cron schedules: each on pg_cron where the server has it and pg_cron can express it, else on a scheduler
of our own inside workers.

Both fire through `pgflow_trio.fire_schedule(name, tick)`, which records the tick in the same transaction that
starts the run, so a tick fires at most once however many schedulers run. A schedule belongs to its flow: it fires
only while the flow exists and some live worker (any language) serves it (`pgflow_trio.flow_is_served`); others
are orphans, which `list_schedules` reports and `remove_schedule` removes. The built-in scheduler is elected with a
PostgreSQL advisory lock held on a dedicated connection; its successor fires the ticks the old leader missed within
`grace` seconds, and so does a scheduler when a flow's worker comes back; older missed ticks follow the schedule's
catch-up policy (skip, or fire once). The leader also fires a pg_cron-backed schedule's tick that pg_cron missed
(still unrecorded `PG_CRON_HEAD_START` seconds after it), so both backends give the same guarantee. A paused
schedule fires nothing on either backend; on resume, the ticks it missed follow its catch-up policy.
"""

from __future__ import annotations

import datetime
import functools
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import trio

from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._definitions._schedule import ScheduleDef, latest_tick, next_ticks, ticks_between
from pgflow_trio._exceptions import DatabaseError, PgflowError, ScheduleNotFound
from pgflow_trio._observe._events import ScheduleFire, ScheduleMiss, emit, wanted
from pgflow_trio._runtime._options import CronBackend
from pgflow_trio._store import Database
from pgflow_trio._store import _schedules as store
from pgflow_trio._store._lifecycle import run_origins, ticks_served
from pgflow_trio._store._schedules import StoredSchedule

log = logging.getLogger("pgflow_trio.cron")

LEADER_LOCK = 7_301_946_210_553_118_002


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
    return await db.run(store.pg_cron_version)


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
    schedule: ScheduleDef, preference: CronBackend, pg_cron_installed: bool
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


def _summary(backends: dict[str, str], default: str) -> str:
    used = set(backends.values())
    if len(used) == 2:
        return "pg_cron+builtin"
    return used.pop() if used else default


async def sync_schedules(
    db: Database,
    flows: Sequence[FlowDef],
    *,
    backend: CronBackend = "auto",
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
            log.warning("%s", warning, extra={"schedule": name, "flow_slug": schedule.flow_slug})
            warnings.append(warning)
    changes = await db.run(
        functools.partial(
            store.sync_schedule_rows,
            desired={name: (s, backends[name]) for name, s in desired.items()},
            flow_slugs=[flow.slug for flow in flows],
            prune=prune,
        )
    )
    removed = changes.removed
    if installed:
        on_pg_cron = {name: s for name, s in desired.items() if backends[name] == "pg_cron"}
        not_on_pg_cron = set(removed) | {name for name in desired if name not in on_pg_cron}
        await _sync_pg_cron_jobs(db, cron_db, on_pg_cron, not_on_pg_cron, prune, changes.paused)
    default = "pg_cron" if installed and backend != "builtin" else "builtin"
    return SyncReport(
        _summary(backends, default),
        changes.created,
        changes.updated,
        changes.removed,
        changes.unchanged,
        backends,
        tuple(warnings),
    )


async def _sync_pg_cron_jobs(
    db: Database,
    cron_db: Database,
    desired: dict[str, ScheduleDef],
    unwanted: set[str],
    prune: bool,
    paused: frozenset[str],
) -> None:
    """Create or update the pg_cron jobs of `desired` (inactive for the `paused` ones); unschedule those of
    `unwanted` (and with `prune`, every job of ours that is not desired)."""
    database = await db.run(store.current_database)
    await cron_db.run(
        functools.partial(
            store.sync_pg_cron_jobs,
            database=database,
            desired={name: schedule.five_field for name, schedule in desired.items()},
            unwanted=unwanted,
            prune=prune,
            paused=paused,
        )
    )


async def remove_schedule(db: Database, name: str, *, cron_db: Database | None = None) -> bool:
    """Remove schedule `name`: its row, its recorded ticks, and its pg_cron job if it has one (in `cron_db`,
    default `db`). Returns whether a pg_cron job was removed too; raises ScheduleNotFound, listing the schedules
    that exist, when there is neither a schedule nor a job of that name."""
    cron_db = cron_db or db
    removal = await db.run(functools.partial(store.delete_schedule, name=name))
    removed_job = False
    if await pg_cron_version(cron_db) is not None:
        database = await db.run(store.current_database)
        removed_job = await cron_db.run(functools.partial(store.delete_pg_cron_job, name=name, database=database))
    if not removal.removed and not removed_job:
        raise _not_found(name, removal.others)
    return removed_job


def _not_found(name: str, others: Sequence[str]) -> ScheduleNotFound:
    existing = f"the schedules are: {', '.join(others)}" if others else "there are no schedules"
    return ScheduleNotFound(f"there is no schedule {name!r}; {existing} (python -m pgflow_trio cron list)")


async def pause_schedule(db: Database, name: str, *, cron_db: Database | None = None) -> datetime.datetime:
    """Pause schedule `name`: it fires no ticks on either backend until resumed (`fire_schedule` refuses it, the
    built-in scheduler skips it, and its pg_cron job, if any, is deactivated). Pausing twice keeps the first
    instant, which it returns. ScheduleNotFound, listing the schedules, when there is no such schedule."""
    pause = await db.run(functools.partial(store.pause_schedule_row, name=name))
    if pause is None:
        raise _not_found(name, await db.run(store.schedule_names))
    if pause.backend == "pg_cron":
        await _set_pg_cron_job_active(db, cron_db or db, name, active=False)
    log.info("schedule %s paused", name, extra={"schedule": name})
    return pause.paused_at


def settle_on_resume(schedule: ScheduleDef, since: datetime.datetime, now: datetime.datetime) -> datetime.datetime:
    """Up to when a resumed schedule's missed ticks count as handled: `now` with catch_up='skip' (none fires);
    with catch_up='once', just before the latest tick missed since `since`, so that the scheduler fires that one
    tick (a tick after the resume fires as usual)."""
    if schedule.catch_up == "once":
        latest = latest_tick(schedule, now)
        if latest is not None and latest > since:
            return latest - datetime.timedelta(microseconds=1)
    return now


async def resume_schedule(db: Database, name: str, *, cron_db: Database | None = None) -> bool:
    """Resume schedule `name`; whether it was paused. The ticks it missed while paused follow its catch_up policy
    (`settle_on_resume`); its pg_cron job, if any, is activated again. ScheduleNotFound when there is no such
    schedule."""
    resumed = await db.run(functools.partial(store.resume_schedule_row, name=name, settle=settle_on_resume))
    if resumed is None:
        raise _not_found(name, await db.run(store.schedule_names))
    if resumed.backend == "pg_cron":
        await _set_pg_cron_job_active(db, cron_db or db, name, active=True)
    if resumed.was_paused:
        log.info(
            "schedule %s resumed; its missed ticks are settled up to %s",
            name,
            resumed.settled_to,
            extra={"schedule": name},
        )
    return resumed.was_paused


async def _set_pg_cron_job_active(db: Database, cron_db: Database, name: str, *, active: bool) -> None:
    """(De)activate a schedule's pg_cron job. Where this role may not alter pg_cron jobs, the job stays as it is
    (a warning says so): fire_schedule refuses a paused schedule anyway."""
    if await pg_cron_version(cron_db) is None:
        return
    database = await db.run(store.current_database)
    try:
        await cron_db.run(functools.partial(store.set_pg_cron_job_active, name=name, database=database, active=active))
    except DatabaseError as exc:
        if exc.sqlstate != "42501":  # insufficient_privilege
            raise
        log.warning(
            "schedule %s: could not %sactivate its pg_cron job (%s); fire_schedule refuses it while paused",
            name,
            "" if active else "de",
            exc,
            extra={"schedule": name},
        )


PG_CRON_HEAD_START = 15.0
"""Seconds the built-in leader leaves a pg_cron-backed schedule's tick to pg_cron before firing it itself."""


@attrs.frozen
class Plan:
    """What one scheduler pass does with one schedule."""

    catch_up: datetime.datetime | None
    """The latest tick missed before the grace window, to fire (catch_up='once')."""
    skip_to: datetime.datetime | None
    """The latest tick missed before the grace window, to record as handled without firing (catch_up='skip')."""
    due: list[datetime.datetime]
    """Unrecorded ticks within the grace window, oldest first."""


def plan_ticks(
    schedule: ScheduleDef,
    *,
    since: datetime.datetime,
    now: datetime.datetime,
    grace: float,
    head_start: float = 0.0,
    recorded: frozenset[datetime.datetime] = frozenset(),
    first: datetime.datetime | None = None,
) -> Plan:
    """Which ticks to fire now: every unrecorded tick after `since` (the last tick fired or skipped) within `grace`
    seconds of `now` and at least `head_start` seconds old, plus, when ticks were missed before that window, the
    latest of them if catch_up is 'once'. `first`: list the window's ticks from there instead of from `since`.

    The work does not depend on how long ago `since` was: only the window's ticks are listed, and the latest tick
    before it is one step back with croniter."""
    window = now - datetime.timedelta(seconds=grace)
    after = max(since if first is None else first, window)
    due = [t for t in ticks_between(schedule, after, now - datetime.timedelta(seconds=head_start)) if t not in recorded]
    missed = latest_tick(schedule, window) if since < window else None
    if missed is None or missed <= since:
        return Plan(None, None, due)
    if schedule.catch_up == "once":
        return Plan(missed, None, due)
    return Plan(None, missed, due)


async def fire_due(db: Database, *, grace: float, head_start: float = PG_CRON_HEAD_START) -> float | None:
    """Fire the due ticks of every schedule whose flow a live worker serves; returns seconds until the next tick
    (None: no such schedules).

    Built-in schedules fire on time. A pg_cron-backed schedule's tick is fired here only once it is `head_start`
    seconds old and still unrecorded (pg_cron missed it, say while no worker served the flow), within `grace`:
    `fire_schedule` records each (schedule, tick) once, so whichever of the two comes second starts nothing.
    pg_cron calls it with the tick `date_trunc('minute', clock_timestamp())`, the minute's UTC instant, exactly
    as the ticks computed here. Unserved schedules are not even looked at: their ticks wait, unrecorded, until a
    worker is back (then they are missed ticks like any other)."""
    soonest: float | None = None
    for due in await db.run(functools.partial(store.due_schedules, recent=grace + head_start + 1)):
        schedule = due.schedule
        now = due.now
        on_pg_cron = due.backend == "pg_cron"
        # pg_cron may fire a later tick before this leader fires an earlier one it missed: the window of a
        # pg_cron-backed schedule is listed from its creation (or last resume), and recorded ticks are left out.
        plan = plan_ticks(
            schedule,
            since=due.since,
            now=now,
            grace=grace,
            head_start=head_start if on_pg_cron else 0.0,
            recorded=due.recorded,
            first=due.window_from if on_pg_cron else None,
        )
        fields = _schedule_fields(schedule)
        if plan.skip_to is not None:
            log.warning(
                "schedule %s skipped the ticks missed up to %s (catch_up=skip)",
                schedule.name,
                plan.skip_to,
                extra=fields,
            )
            await db.run(functools.partial(store.skip_ticks, name=schedule.name, until=plan.skip_to))
        if wanted(ScheduleMiss) and (plan.skip_to is not None or plan.catch_up is not None):
            await _emit_missed(db, schedule, plan, since=due.since, recorded=due.recorded, grace=grace)
        for tick in ([plan.catch_up] if plan.catch_up is not None else []) + plan.due:
            run_id = await db.run(functools.partial(store.fire_schedule, name=schedule.name, tick=tick))
            if run_id is not None:
                log.info(
                    "schedule %s fired tick %s: run %s",
                    schedule.name,
                    tick.isoformat(),
                    run_id,
                    extra={**fields, "run_id": str(run_id), "tick": tick.isoformat()},
                )
                if wanted(ScheduleFire):
                    await _emit_fired(db, schedule, tick, run_id)
        upcoming = next_ticks(schedule, now, 1)
        if upcoming:
            wait = (upcoming[0] - now).total_seconds() + (head_start if on_pg_cron else 0.0)
            soonest = wait if soonest is None else min(soonest, wait)
    return soonest


_MISSED_LIMIT = 1000
"""At most this many schedule.missed events per schedule and pass (the oldest ticks of a longer outage are left
out)."""


def _schedule_fields(schedule: ScheduleDef) -> dict[str, Any]:
    """`extra` of the scheduler's records about one schedule (the event fields' names)."""
    return {"schedule": schedule.name, "flow_slug": schedule.flow_slug}


async def _emit_fired(db: Database, schedule: ScheduleDef, tick: datetime.datetime, run_id: Any) -> None:
    """schedule.fired, its lateness from the run's start time as the database stamped it (one more statement,
    only when someone listens)."""
    origins = await db.run(functools.partial(run_origins, run_ids=[run_id]))
    origin = origins.get(run_id)
    started = origin.started_at if origin is not None else datetime.datetime.now(datetime.UTC)
    emit(
        ScheduleFire(
            at=time.time(),
            schedule=schedule.name,
            flow_slug=schedule.flow_slug,
            tick=tick,
            run_id=run_id,
            lateness=max(0.0, (started - tick).total_seconds()),
        )
    )


async def _emit_missed(
    db: Database,
    schedule: ScheduleDef,
    plan: Plan,
    *,
    since: datetime.datetime,
    recorded: frozenset[datetime.datetime],
    grace: float,
) -> None:
    """schedule.missed for each tick this pass gives up on: with catch_up='skip' every tick missed before the grace
    window; with 'once' every such tick but the latest, which fires. The reason says whether no live worker
    served the flow at the tick (from pgflow.workers' history), or the tick is merely older than the grace."""
    if plan.skip_to is not None:
        missed = ticks_between(schedule, since, plan.skip_to, limit=_MISSED_LIMIT)
        policy = "catch_up=skip"
    else:
        assert plan.catch_up is not None
        missed = [t for t in ticks_between(schedule, since, plan.catch_up, limit=_MISSED_LIMIT) if t < plan.catch_up]
        policy = "catch_up=once: only the latest missed tick fires"
    missed = [t for t in missed if t not in recorded]
    if not missed:
        return
    served = await db.run(functools.partial(ticks_served, flow_slug=schedule.flow_slug, ticks=missed))
    for tick, was_served in zip(missed, served, strict=True):
        if was_served:
            reason = f"older than the scheduler's grace of {grace:g}s when a scheduler looked ({policy})"
        else:
            reason = f"no live worker served flow {schedule.flow_slug!r} at the tick ({policy})"
        emit(
            ScheduleMiss(at=time.time(), schedule=schedule.name, flow_slug=schedule.flow_slug, tick=tick, reason=reason)
        )


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
                if await store.try_lead(session, LEADER_LOCK):
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
                # The termination listener may lag: check that the lock's session is still there.
                await store.check_session(session)


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
    paused_at: datetime.datetime | None = None
    """Since when the schedule is paused (it fires nothing until resumed); None when it is not."""


def _ago(age: datetime.timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _orphan_reason(stored: StoredSchedule) -> str | None:
    slug = stored.schedule.flow_slug
    if not stored.flow_exists:
        return f"flow {slug!r} is not in the database"
    if stored.served:
        return None
    seen = stored.last_seen
    when = f"last worker seen {_ago(stored.now - seen)} ago" if seen is not None else "no worker ever registered"
    return f"no live worker serves flow {slug!r} ({when})"


async def list_schedules(db: Database, flows: Sequence[FlowDef] = (), count: int = 3) -> list[ScheduleStatus]:
    """Every schedule in the database with its next ticks and last run, drift against `flows`' code, and why it
    is an orphan (firing nothing) if it is one."""
    stored = await db.run(store.stored_schedules)
    code = {s.name: s for flow in flows for s in flow.schedules}
    in_code_flows = {flow.slug for flow in flows}
    out = []
    seen = set()
    for row in stored:
        schedule = row.schedule
        drift: list[str] = []
        mine = code.get(schedule.name)
        seen.add(schedule.name)
        if mine is not None:
            for what, ours, theirs in (
                ("expression", mine.expression, schedule.expression),
                ("timezone", mine.timezone, schedule.timezone),
                ("catch_up", mine.catch_up, schedule.catch_up),
                ("input", mine.input, schedule.input),
            ):
                if ours != theirs:
                    drift.append(f"{what}: {ours!r} in code, {theirs!r} in the database")
        elif schedule.flow_slug in in_code_flows:
            drift.append("not in the code any more (cron sync removes it)")
        out.append(
            ScheduleStatus(
                schedule.name,
                schedule.flow_slug,
                row.backend,
                schedule.expression,
                schedule.timezone,
                schedule.catch_up,
                tuple(next_ticks(schedule, row.now, count)),
                row.last_tick,
                row.last_run_id,
                row.last_run_status,
                tuple(drift),
                _orphan_reason(row),
                row.paused_at,
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
