"""Template filters: times, durations, ids and numbers as an operator reads them."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import jinja2


def ago(value: datetime.datetime | None, now: datetime.datetime | None = None) -> str:
    """`12s ago`, `5m ago`, `3h ago`, `2d ago`; `—` for nothing."""
    if value is None:
        return "—"
    now = now or datetime.datetime.now(datetime.UTC)
    seconds = (now - value).total_seconds()
    if seconds < 0:
        return "in " + duration(-seconds)
    return duration(seconds) + " ago"


def duration(value: float | datetime.timedelta | None) -> str:
    """A duration in its largest sensible unit: `850ms`, `12.3s`, `4m 05s`, `2h 10m`, `3d 4h`."""
    if value is None:
        return "—"
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def timestamp(value: datetime.datetime | None) -> str:
    """UTC, to the second: `2026-11-22 07:01:02Z`."""
    if value is None:
        return "—"
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def clock(value: datetime.datetime | None) -> str:
    """The time of day in UTC to the millisecond, `08:26:28.412`: tasks of one run differ by less than a second."""
    if value is None:
        return "—"
    return value.astimezone(datetime.UTC).strftime("%H:%M:%S.%f")[:-3]


def short_id(value: uuid.UUID | str | None) -> str:
    """The first 8 characters of an id, enough to tell runs apart on a page."""
    return "—" if value is None else str(value)[:8]


def number(value: float | None) -> str:
    """Thousands separated; `—` for nothing."""
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def install(env: jinja2.Environment) -> None:
    env.filters.update(
        ago=ago,
        duration=duration,
        timestamp=timestamp,
        clock=clock,
        short_id=short_id,
        number=number,
        percent=percent,
        pretty_json=pretty_json,
    )
