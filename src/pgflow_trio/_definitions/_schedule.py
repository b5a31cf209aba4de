"""Cron schedules as data: `Schedule` (what users write), `ScheduleDef` (validated, part of a FlowDef), and tick
arithmetic on wall-clock time zones."""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Sequence
from typing import Any, Literal

import attrs
from croniter import CroniterError, croniter

from pgflow_trio._definitions._slugs import slug_problem
from pgflow_trio._exceptions import DefinitionError

CatchUp = Literal["skip", "once"]
UTC = datetime.UTC

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@attrs.frozen
class Schedule:
    """When to start a flow and with what input.

    `expression`: five fields (minute hour day-of-month month day-of-week), an alias (@hourly, @daily, @weekly,
    @monthly, @yearly), or six fields with seconds first (built-in scheduler only). `timezone`: an IANA name; the
    schedule follows that wall clock across DST changes. `catch_up`: after downtime longer than the scheduler's
    grace period, `skip` the missed ticks or fire `once` for them. `name` distinguishes several schedules of a flow.
    """

    expression: str
    input: Any = None
    name: str | None = None
    timezone: str = "UTC"
    catch_up: CatchUp = "skip"


@attrs.frozen
class ScheduleDef:
    """A validated schedule: `name` is unique in the database; `input` is plain JSON data."""

    name: str
    flow_slug: str
    expression: str
    input: Any
    timezone: str
    catch_up: CatchUp
    has_seconds: bool

    @property
    def five_field(self) -> str:
        """The expression without aliases (what pg_cron is given)."""
        return ALIASES.get(self.expression.strip().lower(), self.expression.strip())


def parse_expression(expression: object, where: str) -> bool:
    """Validate a cron expression; returns whether it has a seconds field. Errors say what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise DefinitionError(f"{where}: a cron schedule must be a non-empty string, got {expression!r}")
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise DefinitionError(
                f"{where}: unknown cron alias {text!r}; use one of {', '.join(sorted(ALIASES))} or five fields"
            )
        return False
    fields = text.split()
    if len(fields) not in (5, 6):
        raise DefinitionError(
            f"{where}: cron schedule {text!r} has {len(fields)} fields; use five (minute hour day-of-month month "
            "day-of-week), six with seconds first, or an alias like @hourly"
        )
    seconds = len(fields) == 6
    try:
        croniter(text, datetime.datetime(2000, 1, 1, tzinfo=UTC), second_at_beginning=seconds)
    except (CroniterError, ValueError, KeyError) as exc:
        raise DefinitionError(f"{where}: cron schedule {text!r} is invalid: {exc}") from exc
    return seconds


def make_schedules(flow_slug: str, raw: object, origin: str, encode: Any) -> tuple[ScheduleDef, ...]:
    """Validate `cron=` of a flow or job (a string, a Schedule, or a list of them)."""
    if raw is None:
        return ()
    items: Sequence[object] = raw if isinstance(raw, (list, tuple)) else [raw]
    out: list[ScheduleDef] = []
    for index, item in enumerate(items):
        schedule = Schedule(item) if isinstance(item, str) else item
        where = f"{origin}, cron[{index}]" if len(items) > 1 else f"{origin}, cron"
        if not isinstance(schedule, Schedule):
            raise DefinitionError(f"{where}: expected a cron string or Schedule(...), got {type(item).__name__}")
        seconds = parse_expression(schedule.expression, where)
        try:
            zoneinfo.ZoneInfo(schedule.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise DefinitionError(f"{where}: unknown time zone {schedule.timezone!r}; use an IANA name") from None
        if schedule.catch_up not in ("skip", "once"):
            raise DefinitionError(f"{where}: catch_up must be 'skip' or 'once', got {schedule.catch_up!r}")
        if schedule.name is None:
            if len(items) > 1:
                raise DefinitionError(f"{where}: a flow with several schedules must name each (name='...')")
            name = flow_slug
        else:
            if (problem := slug_problem(schedule.name)) is not None:
                raise DefinitionError(f"{where}: schedule name {schedule.name!r} {problem}")
            name = f"{flow_slug}__{schedule.name}"
        try:
            data = encode(schedule.input)
        except Exception as exc:
            raise DefinitionError(f"{where}: the schedule's input does not fit the flow: {exc}") from exc
        out.append(
            ScheduleDef(
                name, flow_slug, schedule.expression.strip(), data, schedule.timezone, schedule.catch_up, seconds
            )
        )
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise DefinitionError(f"{origin}: schedule names must be unique")
    return tuple(out)


def _hour_is_wildcard(expression: str, has_seconds: bool) -> bool:
    fields = ALIASES.get(expression.lower(), expression).split()
    hour = fields[2] if has_seconds else fields[1]
    return hour == "*" or hour.startswith("*/")


def ticks_between(
    schedule: ScheduleDef, after: datetime.datetime, until: datetime.datetime, limit: int = 10_000
) -> list[datetime.datetime]:
    """The schedule's ticks t with after < t <= until, as UTC instants, in order.

    On the wall clock of its time zone: a time skipped by DST fires at the first instant after the gap; a time
    that occurs twice fires once, unless the hour field is a wildcard (then both real instants are ticks)."""
    tz = zoneinfo.ZoneInfo(schedule.timezone)
    expression = ALIASES.get(schedule.expression.lower(), schedule.expression)
    it = croniter(expression, after.astimezone(tz), second_at_beginning=schedule.has_seconds)
    once_per_wall_time = not _hour_is_wildcard(schedule.expression, schedule.has_seconds)
    out: list[datetime.datetime] = []
    while len(out) < limit:
        tick: datetime.datetime = it.get_next(datetime.datetime)
        if tick.fold == 1 and once_per_wall_time:
            continue
        instant = tick.astimezone(UTC)
        if instant <= after:
            continue
        if instant > until:
            break
        if out and instant <= out[-1]:
            continue
        out.append(instant)
    return out


def latest_tick(schedule: ScheduleDef, until: datetime.datetime) -> datetime.datetime | None:
    """The schedule's last tick at or before `until` (None: none in the last ten years), however long ago.

    Two steps back with croniter, then `ticks_between` over that short span, so the wall-clock rules are those of
    `ticks_between` and the cost does not grow with the distance to `until`."""
    tz = zoneinfo.ZoneInfo(schedule.timezone)
    expression = ALIASES.get(schedule.expression.lower(), schedule.expression)
    it = croniter(expression, until.astimezone(tz), second_at_beginning=schedule.has_seconds)
    try:
        it.get_prev(datetime.datetime)
        earlier: datetime.datetime = it.get_prev(datetime.datetime)
    except CroniterError:
        return None
    ticks = ticks_between(schedule, earlier.astimezone(UTC) - datetime.timedelta(seconds=1), until)
    return ticks[-1] if ticks else None


def next_ticks(schedule: ScheduleDef, now: datetime.datetime, count: int) -> list[datetime.datetime]:
    """The next `count` ticks after `now`."""
    horizon = now + datetime.timedelta(days=3700)
    return ticks_between(schedule, now, horizon, limit=count)
