"""Worker options, validated when made; each can also come from a `PGFLOW_*` environment variable in the CLI.

The validators are attrs' own, composed; `checked` turns their TypeError/ValueError into a ConfigurationError that
names the option and what it accepts. Each field's `metadata["help"]` is its one-line help, shown by the CLI.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, Literal, get_args

import attrs
from attrs import validators as v

from pgflow_trio._exceptions import ConfigurationError
from pgflow_trio._models import PruneStatus
from pgflow_trio._observe._hooks import require_otel, require_prometheus
from pgflow_trio._runtime._pruner import seconds_of

Signal = Literal["poll", "notify"]
CronBackend = Literal["auto", "builtin", "pg_cron"]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]

_NOT_BOOL = v.not_(v.instance_of(bool))  # True is an int to isinstance, never a count or a number of seconds


def checked(owner: str, allowed: str, *validators: Validator) -> Validator:
    """attrs validators run in order; the first failure becomes a ConfigurationError such as
    "worker option concurrency must be an integer >= 1, got 0" (`owner` "worker", `allowed` "an integer >= 1")."""
    validate_all = v.and_(*validators)

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        try:
            validate_all(instance, attribute, value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{owner} option {attribute.name} must be {allowed}, got {value!r}") from None

    return validate


def integer(owner: str, low: int = 1, high: int | None = None) -> Validator:
    """An int (not a bool) >= low, and <= high when given."""
    if high is None:
        return checked(owner, f"an integer >= {low}", _NOT_BOOL, v.instance_of(int), v.ge(low))
    return checked(owner, f"an integer from {low} to {high}", _NOT_BOOL, v.instance_of(int), v.ge(low), v.le(high))


def positive(owner: str) -> Validator:
    """An int or float (not a bool) above zero; NaN is refused."""
    return checked(owner, "a positive number", _NOT_BOOL, v.instance_of((int, float)), v.gt(0))


def boolean(owner: str) -> Validator:
    return checked(owner, "True or False", v.instance_of(bool))


def one_of(owner: str, choices: Any) -> Validator:
    """One of a Literal's values."""
    allowed = tuple(get_args(choices))
    names = ", ".join(repr(c) for c in allowed[:-1]) + f" or {allowed[-1]!r}"
    return checked(owner, names, v.in_(allowed))


_count = integer("worker")
_seconds = positive("worker")
_flag = boolean("worker")


def _optional_duration(value: float | datetime.timedelta | str | None) -> float | None:
    """A pruner duration in seconds: a number, a timedelta or a string such as '7d' (None stays None)."""
    return None if value is None else seconds_of(value, what="worker option prune_older_than")


def _duration(value: float | datetime.timedelta | str) -> float:
    return seconds_of(value, what="worker option prune_interval")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """How a worker reads, runs and recovers tasks. Times are in seconds. `metadata["help"]`: the CLI's help."""

    concurrency: int = attrs.field(default=10, validator=_count, metadata=_help("tasks run at once per flow"))
    """Tasks run at once per worker; the reader asks only for as many messages as there are free slots."""
    batch_size: int = attrs.field(default=10, validator=_count, metadata=_help("most messages read at once"))
    """Most messages read in one go."""
    signal: Signal = attrs.field(
        default="notify", validator=one_of("worker", Signal), metadata=_help("how new work is noticed")
    )
    """`notify`: the reader wakes when a message may have become readable (our triggers on inserts and on messages
    made visible earlier, a timer for the next invisible message), plus a fallback poll;
    `poll`: read_with_poll."""
    poll_min: float = attrs.field(default=0.05, validator=_seconds, metadata=_help("shortest poll interval (busy)"))
    """Shortest server-side poll interval (used while busy); it doubles while idle up to `poll_max`."""
    poll_max: float = attrs.field(default=1.0, validator=_seconds, metadata=_help("longest poll interval (idle)"))
    poll_seconds: float = attrs.field(default=2.0, validator=_seconds, metadata=_help("seconds one poll waits"))
    """How long one read_with_poll waits on the server for messages."""
    fallback_poll: float = attrs.field(default=5.0, validator=_seconds, metadata=_help("notify mode's safety poll"))
    """In notify mode, read at least this often anyway (a safety net for lost notifications)."""
    read_visibility: int = attrs.field(default=5, validator=_count, metadata=_help("seconds a read hides a message"))
    """Visibility (s) a read gives a message; the worker extends it while the task runs."""
    heartbeat_interval: float = attrs.field(
        default=5.0, validator=_seconds, metadata=_help("seconds between heartbeats")
    )
    stale_after: float = attrs.field(
        default=30.0,
        validator=_seconds,
        metadata=_help("a worker silent this long is presumed dead and its tasks recovered"),
    )
    """A worker silent this long is presumed dead: its started tasks are recovered."""
    recovery_interval: float = attrs.field(
        default=10.0, validator=_seconds, metadata=_help("seconds between recovery sweeps")
    )
    timeout_grace: float = attrs.field(default=30.0, validator=_seconds, metadata=_help("seconds past a timeout"))
    """A started task older than its timeout plus this is recovered even if its worker heartbeats."""
    shutdown_grace: float = attrs.field(
        default=10.0, validator=_seconds, metadata=_help("seconds running tasks get to finish on stop")
    )
    """On stop, running tasks get this long to finish before they are cancelled and handed back."""
    extend_margin: float = attrs.field(default=3.0, validator=_seconds, metadata=_help("seconds of visibility left"))
    """Extend a running task's visibility when less than this remains."""
    run_check_interval: float = attrs.field(
        default=0.5, validator=_seconds, metadata=_help("seconds between checks that running tasks' runs still run")
    )
    """While tasks run, how often the worker checks that their runs are still running, and cancels the handlers of
    runs that were cancelled or failed. A cancellation notification does the same at once when signal is notify."""
    register_flow: bool = attrs.field(default=True, validator=_flag, metadata=_help("create an absent flow"))
    """Create the flow in the database when it is absent (refuse to start when it differs)."""
    sync_schedules: bool = attrs.field(default=True, validator=_flag, metadata=_help("sync cron schedules at start"))
    """At start, make the database's cron schedules of the served flows match the code (pg_cron or built-in)."""
    cron_backend: CronBackend = attrs.field(
        default="auto",
        validator=one_of("worker", CronBackend),
        metadata=_help(
            "where each cron schedule runs: auto = pg_cron when installed and able to express it, else built-in"
        ),
    )
    """Where the served flows' schedules run, per schedule: `auto` puts each on pg_cron when the database has it
    and it can express the schedule (five fields, UTC), else on the built-in scheduler; `builtin` always the
    built-in one; `pg_cron` prefers pg_cron and falls back, with a warning, for what it cannot run."""
    scheduler: bool = attrs.field(
        default=True, validator=_flag, metadata=_help("run the built-in cron scheduler in this process")
    )
    """Run the built-in cron scheduler in this process (one process leads; the others stand by)."""
    scheduler_grace: float = attrs.field(default=60.0, validator=_seconds, metadata=_help("seconds a tick may be late"))
    """Missed ticks younger than this always fire (e.g. across a leader change); older ones follow catch_up."""

    log_tracebacks: bool = attrs.field(
        default=False,
        validator=_flag,
        metadata=_help("log a failed task's traceback at ERROR with its one-line summary (else at DEBUG)"),
    )
    """A handler's exception is logged as one line (`Type: message`) at ERROR; its traceback goes to DEBUG, or,
    with this, onto that ERROR record."""

    prune_older_than: float | None = attrs.field(
        default=None,
        converter=_optional_duration,
        metadata=_help("run the pruner: delete runs that finished longer ago than this (e.g. 7d)"),
    )
    """Run the pruner in this process (one process leads): delete runs that finished longer ago than this, with
    their step states, tasks and messages. Seconds, a timedelta or a duration such as '7d'; None (default): off."""
    prune_status: PruneStatus = attrs.field(
        default="all", validator=one_of("worker", PruneStatus), metadata=_help("which finished runs the pruner deletes")
    )
    prune_interval: float = attrs.field(
        default=600.0,
        converter=_duration,
        validator=_seconds,
        metadata=_help("seconds (or 30m, 1h) between two pruner passes"),
    )
    prune_batch_size: int = attrs.field(
        default=500, validator=integer("worker", 1, 100_000), metadata=_help("runs the pruner deletes per transaction")
    )

    otel: bool = attrs.field(
        default=False, validator=_flag, metadata=_help("trace each task and record metrics with OpenTelemetry")
    )
    """Trace each task attempt (a CONSUMER span in its run's trace) and record task and queue metrics through the
    OpenTelemetry API, on the global tracer and meter providers. Needs the `otel` extra."""
    metrics_port: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(integer("worker", 0, 65535)),
        metadata=_help("serve Prometheus metrics on this port (0: any free port)"),
    )
    """Serve the metrics in Prometheus' text format at `http://metrics_host:metrics_port/metrics`. Needs the
    `prometheus` extra. None (default): no endpoint."""
    metrics_host: str = attrs.field(
        default="127.0.0.1",
        validator=checked("worker", "a host name or address", v.instance_of(str), v.min_len(1)),
        metadata=_help("the address the metrics endpoint binds"),
    )
    metrics_interval: float = attrs.field(
        default=5.0, validator=_seconds, metadata=_help("seconds between two reads of the queue gauges")
    )

    def __attrs_post_init__(self) -> None:
        if self.otel:
            require_otel("worker option otel")
        if self.metrics_port is not None:
            require_prometheus("worker option metrics_port")
        if self.poll_min > self.poll_max:
            raise ConfigurationError("worker option poll_min must not exceed poll_max")
        if self.stale_after <= self.heartbeat_interval:
            raise ConfigurationError("worker option stale_after must exceed heartbeat_interval")
