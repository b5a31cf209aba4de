"""Worker options, validated when made; each can also come from a `PGFLOW_*` environment variable in the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import attrs

from pgflow_trio._exceptions import ConfigurationError

Signal = Literal["poll", "notify"]
CronBackend = Literal["auto", "builtin", "pg_cron"]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"worker option {attribute.name} must be a positive number, got {value!r}")


def _count(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"worker option {attribute.name} must be an integer >= 1, got {value!r}")


def _one_of(choices: object) -> Callable[[object, attrs.Attribute[str], str], None]:
    """A validator accepting exactly the values of a Literal type."""
    allowed: tuple[str, ...] = get_args(choices)
    spelled = ", ".join(repr(c) for c in allowed[:-1]) + f" or {allowed[-1]!r}"

    def validate(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in allowed:
            raise ConfigurationError(f"worker option {attribute.name} must be {spelled}, got {value!r}")

    return validate


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """How a worker reads, runs and recovers tasks. Times are in seconds."""

    concurrency: int = attrs.field(default=10, validator=_count)
    """Tasks run at once per worker; the reader asks only for as many messages as there are free slots."""
    batch_size: int = attrs.field(default=10, validator=_count)
    """Most messages read in one go."""
    signal: Signal = attrs.field(default="notify", validator=_one_of(Signal))
    """`notify`: the reader wakes when a message may have become readable (our triggers on inserts and on messages
    made visible earlier, a timer for the next invisible message), plus a fallback poll;
    `poll`: read_with_poll."""
    poll_min: float = attrs.field(default=0.05, validator=_positive)
    """Shortest server-side poll interval (used while busy); it doubles while idle up to `poll_max`."""
    poll_max: float = attrs.field(default=1.0, validator=_positive)
    poll_seconds: float = attrs.field(default=2.0, validator=_positive)
    """How long one read_with_poll waits on the server for messages."""
    fallback_poll: float = attrs.field(default=5.0, validator=_positive)
    """In notify mode, read at least this often anyway (a safety net for lost notifications)."""
    read_visibility: int = attrs.field(default=5, validator=_count)
    """Visibility (s) a read gives a message; the worker extends it while the task runs."""
    heartbeat_interval: float = attrs.field(default=5.0, validator=_positive)
    stale_after: float = attrs.field(default=30.0, validator=_positive)
    """A worker silent this long is presumed dead: its started tasks are recovered."""
    recovery_interval: float = attrs.field(default=10.0, validator=_positive)
    timeout_grace: float = attrs.field(default=30.0, validator=_positive)
    """A started task older than its timeout plus this is recovered even if its worker heartbeats."""
    shutdown_grace: float = attrs.field(default=10.0, validator=_positive)
    """On stop, running tasks get this long to finish before they are cancelled and handed back."""
    extend_margin: float = attrs.field(default=3.0, validator=_positive)
    """Extend a running task's visibility when less than this remains."""
    register_flow: bool = True
    """Create the flow in the database when it is absent (refuse to start when it differs)."""
    sync_schedules: bool = True
    """At start, make the database's cron schedules of the served flows match the code (pg_cron or built-in)."""
    cron_backend: CronBackend = attrs.field(default="auto", validator=_one_of(CronBackend))
    """Where the served flows' schedules run, per schedule: `auto` puts each on pg_cron when the database has it
    and it can express the schedule (five fields, UTC), else on the built-in scheduler; `builtin` always the
    built-in one; `pg_cron` prefers pg_cron and falls back, with a warning, for what it cannot run."""
    scheduler: bool = True
    """Run the built-in cron scheduler in this process (one process leads; the others stand by)."""
    scheduler_grace: float = attrs.field(default=60.0, validator=_positive)
    """Missed ticks younger than this always fire (e.g. across a leader change); older ones follow catch_up."""

    def __attrs_post_init__(self) -> None:
        if self.poll_min > self.poll_max:
            raise ConfigurationError("worker option poll_min must not exceed poll_max")
        if self.stale_after <= self.heartbeat_interval:
            raise ConfigurationError("worker option stale_after must exceed heartbeat_interval")
