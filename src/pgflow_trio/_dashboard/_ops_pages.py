"""Overview, Workers, Queues and Schedules pages: what an operator watches to see whether work flows.

The numbers come from bounded store queries (`_store/_dash_ops.py`); this module turns them into what the templates
show: worker health from heartbeats, sparkline geometry, schedules' readings and next fire times."""

from __future__ import annotations

import datetime
import functools
import re
import zoneinfo
from collections.abc import Sequence

import attrs
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pgflow_trio._dashboard._state import Dashboard
from pgflow_trio._definitions._schedule import ALIASES, next_ticks
from pgflow_trio._store import _dash_ops
from pgflow_trio._store._dash_ops import HourBucket, WorkerRow
from pgflow_trio._store._schedules import StoredSchedule

REFRESH_SECONDS = 5.0
"""Timer refresh of the pages whose data sends no events (heartbeats, queue depth)."""
SCHEDULES_REFRESH_SECONDS = 30.0
DEAD_AFTER_STALE = 10
"""A worker silent for this many times the engine's `stale_after` counts as dead rather than stale."""
NEXT_FIRES = 3


def routes(dash: Dashboard) -> list[BaseRoute]:
    """The four pages, each a GET route."""

    async def overview_page(request: Request) -> Response:
        data = await dash.query(functools.partial(_dash_ops.overview, stale_after=dash.engine.options.stale_after))
        context = {
            "o": data,
            "last_hour": data.hours[0],
            "last_day": _sum(data.hours),
            "sparks": sparklines(data.hours),
        }
        return dash.render(request, "overview.html", context, topics="runs", refresh=REFRESH_SECONDS)

    async def workers_page(request: Request) -> Response:
        data = await dash.query(_dash_ops.workers)
        stale_after = dash.engine.options.stale_after
        rows = [WorkerHealth(w, worker_health(w, data.now, stale_after)) for w in data.workers]
        context = {"now": data.now, "workers": rows, "truncated": data.truncated, "stale_after": stale_after}
        return dash.render(request, "workers.html", context, refresh=REFRESH_SECONDS)

    async def queues_page(request: Request) -> Response:
        data = await dash.query(functools.partial(_dash_ops.queues, stale_after=dash.engine.options.stale_after))
        context = {"now": data.now, "queues": data.queues, "cap": _dash_ops.COUNT_CAP}
        return dash.render(request, "queues.html", context, topics="runs", refresh=REFRESH_SECONDS)

    async def schedules_page(request: Request) -> Response:
        data = await dash.query(_dash_ops.schedules)
        rows = [schedule_view(s, data.recent_runs.get(s.schedule.name, ())) for s in data.schedules]
        context = {"schedules": rows}
        return dash.render(request, "schedules.html", context, topics="runs", refresh=SCHEDULES_REFRESH_SECONDS)

    return [
        Route("/", overview_page),
        Route("/workers", workers_page),
        Route("/queues", queues_page),
        Route("/schedules", schedules_page),
    ]


# ---- overview ----------------------------------------------------------------------------------------------------


def _sum(hours: Sequence[HourBucket]) -> HourBucket:
    return HourBucket(
        len(hours),
        sum(h.completed for h in hours),
        sum(h.failed for h in hours),
        sum(h.cancelled for h in hours),
    )


def failure_rate(bucket: HourBucket) -> float | None:
    """Failed runs over finished ones (completed + failed; cancellations are deliberate and left out)."""
    finished = bucket.completed + bucket.failed
    return None if finished == 0 else bucket.failed / finished


@attrs.frozen
class Sparkline:
    """An SVG polyline's `points` in a `width` x `height` box, oldest value on the left, and what it shows."""

    points: str
    width: int
    height: int
    peak: float
    label: str


SPARK_WIDTH = 240
SPARK_HEIGHT = 40


def sparkline(values: Sequence[float], label: str, *, peak: float | None = None) -> Sparkline:
    """Points scaling `values` (oldest first) to the box; a flat line at the bottom when all are zero."""
    top = peak if peak is not None else max(values, default=0.0)
    step = SPARK_WIDTH / max(len(values) - 1, 1)
    pad = 2.0
    span = SPARK_HEIGHT - 2 * pad
    points = []
    for i, v in enumerate(values):
        y = SPARK_HEIGHT - pad - (span * v / top if top > 0 else 0.0)
        points.append(f"{i * step:.1f},{y:.1f}")
    return Sparkline(" ".join(points), SPARK_WIDTH, SPARK_HEIGHT, top, label)


def sparklines(hours: Sequence[HourBucket]) -> dict[str, Sparkline]:
    """Throughput (finished runs per hour) and failure rate per hour over the last day, oldest first."""
    oldest_first = list(reversed(hours))
    throughput = [float(h.completed + h.failed + h.cancelled) for h in oldest_first]
    rates = [failure_rate(h) or 0.0 for h in oldest_first]
    return {
        "throughput": sparkline(throughput, "finished runs per hour, last 24 hours"),
        "failures": sparkline(rates, "failure rate per hour, last 24 hours", peak=1.0),
    }


# ---- workers -----------------------------------------------------------------------------------------------------


@attrs.frozen
class WorkerHealth:
    worker: WorkerRow
    health: str
    """healthy, stale, dead, stopping or stopped."""


def worker_health(worker: WorkerRow, now: datetime.datetime, stale_after: float) -> str:
    """A worker that said it stops (deprecated) is `stopping` while it still heartbeats within `stale_after`
    (draining: finishing its running tasks), then `stopped`. One that did not is `healthy` (heartbeat within
    `stale_after`), `stale` (silent longer: its tasks count as stalled), `dead` (silent for `DEAD_AFTER_STALE`
    times `stale_after`)."""
    silent = (now - worker.last_heartbeat_at).total_seconds()
    if worker.deprecated_at is not None:
        return "stopping" if silent <= stale_after else "stopped"
    if silent <= stale_after:
        return "healthy"
    return "stale" if silent <= stale_after * DEAD_AFTER_STALE else "dead"


# ---- schedules ---------------------------------------------------------------------------------------------------


@attrs.frozen
class NextFire:
    """A coming tick: the instant, and the wall-clock time it is in the schedule's time zone."""

    at: datetime.datetime
    local: str


@attrs.frozen
class ScheduleView:
    stored: StoredSchedule
    reading: str
    next_fires: tuple[NextFire, ...]
    recent_runs: tuple[_dash_ops.ScheduleRun, ...]
    problem: str | None
    """Why the schedule cannot fire (its flow is gone, or no live worker serves it), None when it can."""
    held: bool
    """Paused or orphaned: `next_fires` are when it would fire once resumed (or its flow is back), not plans."""


def schedule_view(stored: StoredSchedule, recent: Sequence[_dash_ops.ScheduleRun]) -> ScheduleView:
    s = stored.schedule
    try:
        zone = zoneinfo.ZoneInfo(s.timezone)
        fires = tuple(
            NextFire(t, t.astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S"))
            for t in next_ticks(s, stored.now, NEXT_FIRES)
        )
    except (ValueError, KeyError, LookupError):  # an expression or zone this code no longer accepts
        fires = ()
    held = stored.paused_at is not None or not stored.flow_exists
    return ScheduleView(stored, describe_cron(s.expression), fires, tuple(recent), schedule_problem(stored), held)


def schedule_problem(stored: StoredSchedule) -> str | None:
    """What keeps a schedule from firing, as far as the database can tell."""
    if not stored.flow_exists:
        return "orphaned: its flow no longer exists in the database"
    if stored.served:
        return None
    if stored.last_seen is None:
        return "no worker has ever served its flow (is it still in any code?)"
    return "no live worker serves its flow; one was last seen at " + stored.last_seen.strftime("%Y-%m-%d %H:%M:%SZ")


_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_DAY_NAMES = {name[:3].lower(): i for i, name in enumerate(_DAYS)}
_WEEKDAYS = frozenset({"1-5", "mon-fri"})
_NUMBER = re.compile(r"[0-9]{1,2}")
_EVERY = re.compile(r"\*/([0-9]{1,2})")


def _number(field: str, low: int, high: int) -> int | None:
    """A plain number within [low, high], else None."""
    if _NUMBER.fullmatch(field) is None:
        return None
    value = int(field)
    return value if low <= value <= high else None


def _every(field: str) -> int | None:
    """N of `*/N` for a minutes or seconds field when N divides 60 (so the fires are evenly N apart, across the top
    of the hour or minute too: `*/7` fires at :56 then :00); 1 for `*`; else None."""
    if field == "*":
        return 1
    match = _EVERY.fullmatch(field)
    if match is None:
        return None
    n = int(match.group(1))
    return n if 1 <= n < 60 and 60 % n == 0 else None


def _weekday(field: str) -> int | None:
    """A single day of the week (0-7, 7 being Sunday again, or sun..sat), else None."""
    day = _number(field, 0, 7)
    if day is not None:
        return day % 7
    return _DAY_NAMES.get(field.lower())


def _plural(n: int, unit: str) -> str:
    return f"every {unit}" if n == 1 else f"every {n} {unit}s"


def describe_cron(expression: str) -> str:
    """A cron expression as a person reads it, for the common forms: every minute, every N minutes (N dividing
    60), hourly at :MM, daily at HH:MM, weekdays at HH:MM, weekly on a day, monthly on day D (and every second / N
    seconds with a seconds field, N dividing 60). Anything else reads `cron <expression>`. Times are on the
    schedule's own time zone."""
    text = " ".join(expression.split())
    fields = ALIASES.get(text.lower(), text).split()
    if len(fields) == 6:
        seconds, fields = fields[0], fields[1:]
        if seconds != "0":
            every = _every(seconds)
            if every is not None and all(f == "*" for f in fields):
                return _plural(every, "second")
            return f"cron {text}"
    if len(fields) != 5:
        return f"cron {text}"
    return _describe_five(fields) or f"cron {text}"


def _describe_five(fields: Sequence[str]) -> str | None:
    minute, hour, dom, month, dow = fields
    if month != "*":
        return None
    if hour == "*" and dom == "*" and dow == "*":
        every = _every(minute)
        if every is not None:
            return _plural(every, "minute")
        m = _number(minute, 0, 59)
        return None if m is None else f"hourly at :{m:02d}"
    m, h = _number(minute, 0, 59), _number(hour, 0, 23)
    if m is None or h is None:
        return None
    at = f"at {h:02d}:{m:02d}"
    if dom == "*" and dow == "*":
        return f"daily {at}"
    if dom == "*" and dow.lower() in _WEEKDAYS:
        return f"weekdays {at}"
    if dom == "*" and (day := _weekday(dow)) is not None:
        return f"weekly on {_DAYS[day]} {at}"
    if dow == "*" and (d := _number(dom, 1, 31)) is not None:
        return f"monthly on day {d} {at}"
    return None
