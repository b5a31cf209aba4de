"""The client API: `async with open_engine(dsn) as engine`, typed starts, jobs, run handles, events, management."""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, Literal, TypeAlias, TypeVar, overload

import attrs
import trio

from pgflow_trio._client import _control as control
from pgflow_trio._client._events import Change, EventHub, Resync, _Resync
from pgflow_trio._client._manage import (
    delete_flow,
    flow_exists,
    flow_from_database,
    health,
    list_flows,
    pause,
    resume,
    upsert_flow,
)
from pgflow_trio._client._retention import prune_runs
from pgflow_trio._codec import to_json
from pgflow_trio._definitions._flow import Definition, definition_of
from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._definitions._values import decode_run_output, encode_input_json
from pgflow_trio._exceptions import (
    ConfigurationError,
    DefinitionError,
    RunCancelled,
    RunFailed,
    RunNotFound,
    RunTimeout,
    SchemaError,
)
from pgflow_trio._models import (
    JSON,
    BulkOutcome,
    Cancellation,
    Event,
    FlowInfo,
    Health,
    JSONInput,
    PruneReport,
    PruneStatus,
    QueuePause,
    Run,
    RunEvent,
    RunPage,
    Snapshot,
)
from pgflow_trio._observe._events import RunComplete, wanted
from pgflow_trio._observe._hooks import require_otel, run_start_span
from pgflow_trio._runtime import ServeTarget, WorkerGroup, WorkerOptions, run_workers
from pgflow_trio._runtime import _cron as cron
from pgflow_trio._runtime._options import boolean, integer, one_of, positive
from pgflow_trio._store import Connection, Database, DriverChoice, Record, open_database
from pgflow_trio._store._dsn import resolve_dsn
from pgflow_trio._store._lifecycle import completed_at_start
from pgflow_trio._store._runs import checked_slug, failure_of, fetch_run, list_runs, start_run
from pgflow_trio._store._schema import CORE_VERSION, check, require_complete
from pgflow_trio._store._schema import install as install_into
from pgflow_trio._store._traces import rerun_with_trace
from pgflow_trio._util import unwrap_single_errors

In = TypeVar("In")
Out = TypeVar("Out")
_FINAL = frozenset({"run:completed", "run:failed"})
DEFAULT_MAX_AGE = 300.0
"""health_check's default `max_age`: seconds visible work may wait for a worker before the check fails."""

FlowRef: TypeAlias = "str | type[Definition[Any, Any]] | Definition[Any, Any] | FlowDef"
"""How the engine's inspection and management calls name a flow: its slug, its class or instance, or a FlowDef."""


def _slug_of(flow: FlowRef) -> str:
    if isinstance(flow, str):
        return checked_slug(flow)
    return definition_of(flow).slug


async def _require_schema(db: Database) -> None:
    """require_complete, its SchemaError raised plainly (no cause, no group) and naming both fixes."""
    try:
        await require_complete(db)
    except SchemaError as exc:
        raise SchemaError(f"{exc} (or open the engine with open_engine(install=True))") from None


_seconds = positive("engine")
_flag = boolean("engine")


@attrs.frozen(kw_only=True)
class EngineOptions:
    """Options of `open_engine`."""

    pool_size: int = attrs.field(
        default=10, validator=integer("engine", 1, 200), metadata={"help": "most connections the engine opens"}
    )
    """Most connections the engine opens (plus one for LISTEN)."""
    events: bool = attrs.field(default=True, validator=_flag, metadata={"help": "LISTEN for run events"})
    """LISTEN for run events (watch, event-driven result()); without it result() polls."""
    recheck_interval: float = attrs.field(
        default=5.0,
        validator=_seconds,
        metadata={"help": "how often result() re-reads the run while waiting on events"},
    )
    """How often result() re-reads the run while waiting on events (a safety net, not the mechanism)."""
    poll_interval: float = attrs.field(
        default=0.2, validator=_seconds, metadata={"help": "how often result() re-reads the run when events are off"}
    )
    """How often result() re-reads the run when events are off."""
    stale_after: float = attrs.field(
        default=30.0, validator=_seconds, metadata={"help": "workers silent this long count as stale"}
    )
    """Workers silent this long count as stale (health, delete_flow)."""
    check_schema: bool = attrs.field(
        default=True, validator=_flag, metadata={"help": "refuse to open against a database whose schema is incomplete"}
    )
    """Refuse to open against a database whose schema is incomplete (naming the install command)."""
    data_dir: Path | None = attrs.field(
        default=None, metadata={"help": "data directory of the embedded PostgreSQL when no DSN is given"}
    )
    """Data directory of the embedded PostgreSQL when no DSN is given."""
    connect_timeout: float | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_seconds),
        metadata={"help": "seconds a connection may take to open"},
    )
    """Seconds a new connection may take. None: the DSN's connect_timeout, else $PGFLOW_CONNECT_TIMEOUT, else 10."""
    driver: DriverChoice | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(one_of("engine", DriverChoice)),
        metadata={"help": "how Trio reaches asyncpg: auto, trio-asyncio or thread"},
    )
    """How Trio reaches asyncpg: `trio-asyncio` (its loop inside Trio) or `thread` (a plain asyncio loop in a thread
    of its own). None: $PGFLOW_DRIVER, else `auto` (trio-asyncio where it imports, else thread)."""
    otel: bool = attrs.field(default=False, validator=_flag, metadata={"help": "trace run starts with OpenTelemetry"})
    """Trace each start (a PRODUCER span, a child of the caller's span, whose context is stored with the run so
    that workers parent their task spans into the run's trace); `serve()` without options traces its tasks too.
    Needs the `otel` extra."""

    def __attrs_post_init__(self) -> None:
        if self.otel:
            require_otel("engine option otel")


def _as_uuid(value: uuid.UUID | str | None, what: str = "run id") -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise RunNotFound(f"{value!r} is not a valid {what}: expected a UUID") from None


def _run_uuid(run_id: uuid.UUID | str) -> uuid.UUID:
    rid = _as_uuid(run_id)
    assert rid is not None
    return rid


def _cancelled(run: Run) -> RunCancelled:
    assert run.cancellation is not None
    c = run.cancellation
    return RunCancelled(run.run_id, run.flow_slug, reason=c.reason, cancelled_by=c.by, cancelled_at=c.at)


def _when(
    delay: float | datetime.timedelta | None, at: datetime.datetime | None
) -> tuple[datetime.datetime | None, float | None]:
    if delay is not None and at is not None:
        raise ConfigurationError("give either delay or at, not both")
    if at is not None:
        if not isinstance(at, datetime.datetime):
            raise ConfigurationError(f"at must be a datetime, got {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ConfigurationError(
                "at must be timezone-aware (e.g. datetime.now(timezone.utc) + ...); a naive datetime is ambiguous"
            )
        return at, None
    if delay is None:
        return None, None
    seconds = delay.total_seconds() if isinstance(delay, datetime.timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ConfigurationError(f"delay must be a number of seconds or a timedelta, got {delay!r}")
    if seconds < 0:
        raise ConfigurationError(f"delay must not be negative, got {seconds}")
    return None, float(seconds)


class RunHandle(Generic[Out]):
    """A started run. `await handle.result()` waits (on events) for its typed output."""

    def __init__(
        self, engine: Engine, run_id: uuid.UUID, flow_slug: str | None, flow: FlowDef | None, existed: bool
    ) -> None:
        self._engine = engine
        self.run_id = run_id
        self.flow_slug = flow_slug
        """The run's flow; None on a handle from `engine.handle(run_id)` until it has read the run."""
        self.existed = existed
        """True when `run_id=` named a run that already existed (an idempotent start)."""
        self._flow = flow
        self.rerun_of: uuid.UUID | None = None
        """The run this one reruns (`engine.rerun`); None otherwise, or until `get()` has read the run."""

    def __repr__(self) -> str:
        return f"RunHandle({self.flow_slug!r}, {self.run_id})"

    def _learn(self, run: Run) -> Run:
        self.flow_slug = run.flow_slug
        self.rerun_of = run.rerun_of
        return run

    async def result(self, timeout: float | None = None) -> Out:  # noqa: ASYNC109 - the documented API
        """The run's output in the flow's output type; RunFailed if it failed (RunCancelled, a RunFailed, if it was
        cancelled), RunTimeout after `timeout` s."""
        if self.flow_slug is None:  # so that RunFailed/RunTimeout can name the flow
            self._learn(await self._engine._get_run(self.run_id, with_states=False))
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            run = await self._engine._wait_finished(self.run_id)
        if scope.cancelled_caught:
            raise RunTimeout(f"run {self.run_id} of {self.flow_slug} did not finish within {timeout}s")
        if run.cancellation is not None:
            raise _cancelled(run)
        if run.status == "failed":
            step, error = await self._engine.db.run(functools.partial(failure_of, run_id=self.run_id))
            raise RunFailed(self.run_id, run.flow_slug, step, error)
        if self._flow is None:
            return run.output  # type: ignore[return-value]  # an untyped handle is RunHandle[JSON]
        result: Out = decode_run_output(self._flow, run.output)
        return result

    async def get(self, *, with_states: bool = False) -> Run:
        return self._learn(await self._engine._get_run(self.run_id, with_states=with_states))

    def watch(self) -> AsyncIterator[Event]:
        return self._engine.watch(self.run_id)


class _Starter:
    """start/enqueue shared by the engine and its transactions; `_run_sql` runs one unit of work."""

    engine: Engine

    async def _run_sql(self, fn: Any) -> Any:
        raise NotImplementedError

    def _started(self, run_id: uuid.UUID, slug: str, *, completed: bool = False) -> None:
        """A run was stored: run.started, and run.completed when it completed as it started (a transaction's runs
        once it commits)."""
        control.run_started(run_id, slug, completed=completed)

    @overload
    async def start(
        self, flow: type[Definition[In, Out]] | Definition[In, Out], input: In, *, run_id: uuid.UUID | str | None = None
    ) -> RunHandle[Out]: ...
    @overload
    async def start(self, flow: str, input: JSONInput, *, run_id: uuid.UUID | str | None = None) -> RunHandle[JSON]: ...
    @overload
    async def start(self, flow: FlowDef, input: object, *, run_id: uuid.UUID | str | None = None) -> RunHandle[Any]: ...
    async def start(self, flow: Any, input: Any, *, run_id: uuid.UUID | str | None = None) -> RunHandle[Any]:
        """Start a run of a flow (class, instance, FlowDef or slug). With `run_id`, starting the same id again
        returns the existing run instead of failing or duplicating it (`handle.existed`)."""
        return await self._start(flow, input, run_id=run_id)

    async def _start(
        self,
        flow: Any,
        input: Any,
        *,
        run_id: uuid.UUID | str | None,
        at: datetime.datetime | None = None,
        delay: float | None = None,
    ) -> RunHandle[Any]:
        definition: FlowDef | None
        if isinstance(flow, str):
            definition, slug = None, checked_slug(flow)
            input_json = to_json(input, what=f"input of {slug}")
        else:
            definition = definition_of(flow)
            slug = definition.slug
            input_json = encode_input_json(definition, input)
        with run_start_span(slug, self.engine.options.otel) as span:
            rid, existed = await self._run_sql(
                functools.partial(
                    start_run,
                    slug=slug,
                    input_json=input_json,
                    run_id=_as_uuid(run_id),
                    at=at,
                    delay=delay,
                    trace=span.trace,
                )
            )
            span.started(rid, existed)
            if not existed:
                # a run can complete inside start_flow (only empty maps): nobody's report will end it
                done = wanted(RunComplete) and await self._run_sql(functools.partial(completed_at_start, run_id=rid))
                self._started(rid, slug, completed=done)
        typed = definition if definition is not None and definition.typed else None
        return RunHandle(self.engine, rid, slug, typed, existed)

    @overload
    async def enqueue(
        self,
        job: type[Definition[In, Out]] | Definition[In, Out],
        input: In,
        *,
        delay: float | datetime.timedelta | None = None,
        at: datetime.datetime | None = None,
        run_id: uuid.UUID | str | None = None,
    ) -> RunHandle[Out]: ...
    @overload
    async def enqueue(
        self,
        job: str,
        input: JSONInput,
        *,
        delay: float | datetime.timedelta | None = None,
        at: datetime.datetime | None = None,
        run_id: uuid.UUID | str | None = None,
    ) -> RunHandle[JSON]: ...
    @overload
    async def enqueue(
        self,
        job: FlowDef,
        input: object,
        *,
        delay: float | datetime.timedelta | None = None,
        at: datetime.datetime | None = None,
        run_id: uuid.UUID | str | None = None,
    ) -> RunHandle[Any]: ...
    async def enqueue(
        self,
        job: Any,
        input: Any,
        *,
        delay: float | datetime.timedelta | None = None,
        at: datetime.datetime | None = None,
        run_id: uuid.UUID | str | None = None,
    ) -> RunHandle[Any]:
        """Enqueue a job (or any flow): stored now, its first task visible after `delay` seconds or at `at`
        (timezone-aware; past times run now). Negative delays and naive datetimes are rejected."""
        when, seconds = _when(delay, at)
        return await self._start(job, input, run_id=run_id, at=when, delay=seconds)

    @overload
    async def enqueue_in(
        self, job: type[Definition[In, Out]] | Definition[In, Out], input: In, seconds: float | datetime.timedelta
    ) -> RunHandle[Out]: ...
    @overload
    async def enqueue_in(self, job: str, input: JSONInput, seconds: float | datetime.timedelta) -> RunHandle[JSON]: ...
    @overload
    async def enqueue_in(self, job: FlowDef, input: object, seconds: float | datetime.timedelta) -> RunHandle[Any]: ...
    async def enqueue_in(self, job: Any, input: Any, seconds: float | datetime.timedelta) -> RunHandle[Any]:
        """`enqueue(job, input, delay=seconds)`."""
        handle: RunHandle[Any] = await self.enqueue(job, input, delay=seconds)
        return handle

    @overload
    async def enqueue_at(
        self, job: type[Definition[In, Out]] | Definition[In, Out], input: In, when: datetime.datetime
    ) -> RunHandle[Out]: ...
    @overload
    async def enqueue_at(self, job: str, input: JSONInput, when: datetime.datetime) -> RunHandle[JSON]: ...
    @overload
    async def enqueue_at(self, job: FlowDef, input: object, when: datetime.datetime) -> RunHandle[Any]: ...
    async def enqueue_at(self, job: Any, input: Any, when: datetime.datetime) -> RunHandle[Any]:
        """`enqueue(job, input, at=when)`."""
        handle: RunHandle[Any] = await self.enqueue(job, input, at=when)
        return handle


class EngineTransaction(_Starter):
    """Start runs and run your own SQL in one transaction: the runs exist if and only if it commits."""

    def __init__(self, engine: Engine, connection: Connection) -> None:
        self.engine = engine
        self.connection = connection
        self._stored: list[tuple[uuid.UUID, str, bool]] = []  # runs started in it: run.started once it commits

    async def _run_sql(self, fn: Any) -> Any:
        return await self.connection.run(fn)

    def _started(self, run_id: uuid.UUID, slug: str, *, completed: bool = False) -> None:
        self._stored.append((run_id, slug, completed))

    async def execute(self, sql: str, *args: object) -> str:
        return await self.connection.execute(sql, *args)

    async def fetch(self, sql: str, *args: object) -> list[Record]:
        return await self.connection.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: object) -> Record | None:
        return await self.connection.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: object) -> Any:
        return await self.connection.fetchval(sql, *args)


class Engine(_Starter):
    """The entry point to a pgflow database. Create it with `open_engine`."""

    def __init__(self, db: Database, options: EngineOptions) -> None:
        self.engine = self
        self.db = db
        self.options = options
        self._hub = EventHub()

    core_version = CORE_VERSION
    """The pgflow core version this engine speaks."""

    async def _run_sql(self, fn: Any) -> Any:
        return await self.db.run(fn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[EngineTransaction]:
        """`async with engine.transaction() as tx:` then `tx.start(...)`, `tx.execute(...)`: one transaction."""
        async with self.db.transaction(user_sql=True) as connection:
            tx = EngineTransaction(self, connection)
            yield tx
        for run_id, slug, completed in tx._stored:
            control.run_started(run_id, slug, completed=completed)

    # ---- runs ----------------------------------------------------------------------------------------------
    async def _get_run(self, run_id: uuid.UUID | str, *, with_states: bool) -> Run:
        rid = _as_uuid(run_id)
        assert rid is not None
        run = await self.db.run(functools.partial(fetch_run, run_id=rid, with_states=with_states))
        if run is None:
            raise RunNotFound(f"there is no run {rid}")
        return run

    async def get_run(self, run_id: uuid.UUID | str) -> Run:
        """The run (RunNotFound when there is none)."""
        return await self._get_run(run_id, with_states=False)

    async def get_run_with_states(self, run_id: uuid.UUID | str) -> Run:
        """The run with the state of each of its steps, in step order."""
        return await self._get_run(run_id, with_states=True)

    @overload
    def handle(
        self, run_id: uuid.UUID | str, flow: type[Definition[In, Out]] | Definition[In, Out]
    ) -> RunHandle[Out]: ...
    @overload
    def handle(self, run_id: uuid.UUID | str, flow: str | None = None) -> RunHandle[JSON]: ...
    @overload
    def handle(self, run_id: uuid.UUID | str, flow: FlowDef) -> RunHandle[Any]: ...
    def handle(self, run_id: uuid.UUID | str, flow: FlowRef | None = None) -> RunHandle[Any]:
        """A handle on an existing run (pass its flow class to get typed results). Without the flow, the handle
        reads the run's flow slug from the database when it first needs it."""
        rid = _as_uuid(run_id)
        assert rid is not None
        if flow is None:
            return RunHandle(self, rid, None, None, True)
        if isinstance(flow, str):
            return RunHandle(self, rid, checked_slug(flow), None, True)
        definition = definition_of(flow)
        return RunHandle(self, rid, definition.slug, definition if definition.typed else None, True)

    async def list_runs(
        self,
        *,
        flow: FlowRef | None = None,
        status: str | None = None,
        started_after: datetime.datetime | None = None,
        started_before: datetime.datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs, newest first, filtered by flow, status and start time; `page.next_cursor` gives the next page."""
        if status is not None and status not in ("started", "completed", "failed", "cancelled"):
            raise ConfigurationError(
                f"status must be 'started', 'completed', 'failed' or 'cancelled', got {status!r} "
                "('failed' lists failed runs that were not cancelled)"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ConfigurationError(f"limit must be an integer from 1 to 1000, got {limit!r}")
        for name, value in (("started_after", started_after), ("started_before", started_before)):
            if value is not None and value.tzinfo is None:
                raise ConfigurationError(f"{name} must be timezone-aware")
        slug = None if flow is None else _slug_of(flow)
        return await self.db.run(
            functools.partial(
                list_runs,
                flow_slug=slug,
                status=status,
                started_after=started_after,
                started_before=started_before,
                limit=limit,
                cursor=cursor,
            )
        )

    async def _wait_finished(self, run_id: uuid.UUID) -> Run:
        events_on = self.options.events and self._hub.connected
        recheck = self.options.recheck_interval if events_on else self.options.poll_interval
        async with self._hub.subscribe(run_id) as events:
            while True:
                run = await self._get_run(run_id, with_states=False)
                if run.finished:
                    return run
                with trio.move_on_after(recheck):
                    while True:
                        event = await events.receive()
                        if isinstance(event, _Resync) or (isinstance(event, RunEvent) and event.event in _FINAL):
                            break

    async def watch(self, run_id: uuid.UUID | str) -> AsyncIterator[Event]:
        """Typed events of one run: first a Snapshot of its state, then run/step events as they happen, ending
        after the run completes or fails. After a lost connection, a fresh Snapshot is sent."""
        rid = _as_uuid(run_id)
        assert rid is not None
        if not self.options.events:
            raise ConfigurationError("watch() needs events: open the engine with events=True")
        async with self._hub.subscribe(rid) as events:
            run = await self._get_run(rid, with_states=True)
            yield Snapshot(run)
            if run.finished:
                return
            while True:
                event = await events.receive()
                if isinstance(event, _Resync):
                    run = await self._get_run(rid, with_states=True)
                    yield Snapshot(run)
                    if run.finished:
                        return
                    continue
                yield event
                if isinstance(event, RunEvent) and event.event in _FINAL:
                    return

    def changes(self) -> contextlib.AbstractAsyncContextManager[trio.MemoryReceiveChannel[Change | Resync]] | None:
        """Every run's changes as they happen (`async with engine.changes() as changes`), for live views; None when
        the engine has no events (events=False, or its listener is not running): then re-read on a timer."""
        if not (self.options.events and self._hub.connected):
            return None
        return self._hub.subscribe_all()

    # ---- operating runs (cancel, retry in place, rerun) ---------------------------------------------------
    async def cancel_run(
        self, run_id: uuid.UUID | str, *, reason: str | None = None, by: str | None = None
    ) -> Cancellation:
        """Cancel a started run in one transaction: it fails at once (nothing of it starts or completes any more),
        its queued tasks never start, `handle.result()` raises RunCancelled, and workers are told to cancel its
        running handlers. RunNotActive when it is not started (already completed, failed or cancelled)."""
        return await control.cancel_run(self.db, _run_uuid(run_id), reason=reason, by=by)

    async def cancel_runs(
        self,
        *,
        flow: FlowRef,
        started_before: datetime.datetime | None = None,
        reason: str | None = None,
        by: str | None = None,
        dry_run: bool = False,
    ) -> BulkOutcome:
        """Cancel every started run of `flow` (started before `started_before`, timezone-aware), one transaction
        per run. With `dry_run`, only say which runs would be cancelled."""
        return await control.cancel_runs(
            self.db, flow_slug=_slug_of(flow), started_before=started_before, reason=reason, by=by, dry_run=dry_run
        )

    async def retry_run(self, run_id: uuid.UUID | str) -> int:
        """Retry a failed or cancelled run in place, in one transaction: completed steps and map elements keep their
        outputs; every other task gets a fresh attempt. Returns how many tasks were requeued. RunNotRetryable
        unless the run is failed or cancelled; FlowChanged when its flow changed shape since it started."""
        return await control.retry_run(self.db, _run_uuid(run_id))

    async def retry_runs(
        self,
        *,
        flow: FlowRef,
        status: Literal["failed", "cancelled"] = "failed",
        started_before: datetime.datetime | None = None,
        dry_run: bool = False,
    ) -> BulkOutcome:
        """Retry in place every failed (or every cancelled) run of `flow`, one transaction per run; runs that
        cannot be retried (changed state, changed flow) are in `skipped`. `dry_run` only selects."""
        return await control.retry_runs(
            self.db, flow_slug=_slug_of(flow), status=status, started_before=started_before, dry_run=dry_run
        )

    @overload
    async def rerun(
        self, run_id: uuid.UUID | str, flow: type[Definition[In, Out]] | Definition[In, Out]
    ) -> RunHandle[Out]: ...
    @overload
    async def rerun(self, run_id: uuid.UUID | str, flow: str | None = None) -> RunHandle[JSON]: ...
    @overload
    async def rerun(self, run_id: uuid.UUID | str, flow: FlowDef) -> RunHandle[Any]: ...
    async def rerun(self, run_id: uuid.UUID | str, flow: FlowRef | None = None) -> RunHandle[Any]:
        """Start a new run of the run's flow with the same input, linked to it (`handle.rerun_of`,
        `Run.rerun_of`). Pass the flow class for a typed handle; it must be the run's flow."""
        original = _run_uuid(run_id)
        expected = None if flow is None else _slug_of(flow)
        if expected is not None:
            actual = (await self._get_run(original, with_states=False)).flow_slug
            if actual != expected:
                raise DefinitionError(f"run {original} is a run of {actual!r}, not {expected!r}")
        if self.options.otel:
            with run_start_span(None, True) as span:
                new_id, slug = await self.db.run(functools.partial(rerun_with_trace, run_id=original, trace=span.trace))
                span.started(new_id, False, slug)
            control.run_started(new_id, slug)
        else:
            new_id, slug = await control.rerun(self.db, original)
        typed = None if flow is None or isinstance(flow, str) else definition_of(flow)
        handle: RunHandle[Any] = RunHandle(self, new_id, slug, typed if typed and typed.typed else None, False)
        handle.rerun_of = original
        return handle

    # ---- flows ---------------------------------------------------------------------------------------------
    async def list_flows(self) -> list[FlowInfo]:
        """Every flow in the database with its options, steps and run counts."""
        return await list_flows(self.db)

    async def get_flow(self, flow: FlowRef) -> FlowDef:
        """The flow as the database holds it (by slug, class or FlowDef); FlowNotFound when absent."""
        return await flow_from_database(self.db, _slug_of(flow))

    async def flow_exists(self, flow: FlowRef) -> bool:
        return await flow_exists(self.db, _slug_of(flow))

    async def delete_flow(self, flow: FlowRef, *, force: bool = False) -> dict[str, int]:
        """DELETE a flow with all its runs, tasks and its queue. Refuses while live workers serve it unless
        `force=True`. Returns how many rows went per table."""
        return await delete_flow(self.db, _slug_of(flow), force=force, stale_after=self.options.stale_after)

    async def upsert_flow(
        self, flow: Mapping[str, Any] | FlowRef, *, force: bool = False
    ) -> Literal["created", "replaced", "unchanged"]:
        """Create a flow from plain data (a spec dict or FlowDef), or REPLACE a different flow of the same slug.

        WARNING: replacing a flow DELETES ITS HISTORY: every run, step state and task of the old definition, and
        its queue (pgflow flows are immutable). Returns 'created', 'replaced' or 'unchanged'."""
        outcome, _ = await self._upsert_flow(flow, force=force)
        return outcome

    async def _upsert_flow(
        self, flow: Mapping[str, Any] | FlowRef, *, force: bool
    ) -> tuple[Literal["created", "replaced", "unchanged"], dict[str, int]]:
        """upsert_flow, also returning how many rows per table a replacement deleted."""
        from pgflow_trio._definitions._spec import flow_from_spec

        if isinstance(flow, str):
            raise ConfigurationError("upsert_flow takes a flow class, a FlowDef or a spec dict, not a slug")
        definition = flow_from_spec(flow, origin="upsert_flow") if isinstance(flow, Mapping) else definition_of(flow)
        return await upsert_flow(self.db, definition, force=force, stale_after=self.options.stale_after)

    async def health_check(self, *, max_age: float | None = DEFAULT_MAX_AGE, require_workers: bool = True) -> Health:
        """Database reachable, schema versions, and per flow queue: live/stale workers, depth, and how long the
        oldest visible message has waited. Unhealthy (`ok` False, the reason in `problems`) when a queue holds
        visible work and no live worker serves it (unless `require_workers=False`), or when work has waited longer
        than `max_age` seconds (None: no limit)."""
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or max_age < 0):
            raise ConfigurationError(f"max_age must be a number of seconds >= 0 or None, got {max_age!r}")
        return await health(
            self.db, stale_after=self.options.stale_after, max_age=max_age, require_workers=require_workers
        )

    # ---- pausing queues and schedules ----------------------------------------------------------------------
    async def pause(self, flow: FlowRef, *, reason: str | None = None) -> QueuePause:
        """Pause a flow's queue: pgflow_trio's workers stop reading it within a second (running tasks finish and
        complete); runs can still be started, their tasks wait. pgflow's TypeScript workers do not honour it.
        Idempotent (a second pause keeps the first instant); FlowNotFound when the flow is not in the database."""
        return await pause(self.db, _slug_of(flow), reason=reason)

    async def resume(self, flow: FlowRef) -> bool:
        """Resume a paused flow's queue (its workers read again within a second); whether it was paused."""
        return await resume(self.db, _slug_of(flow))

    @asynccontextmanager
    async def _cron_db(self, cron_dsn: str | None) -> AsyncIterator[Database]:
        if cron_dsn is None:
            yield self.db
            return
        async with open_database(cron_dsn, max_size=2, connect_timeout=self.options.connect_timeout) as cron_db:
            yield cron_db

    async def pause_schedule(self, name: str, *, cron_dsn: str | None = None) -> datetime.datetime:
        """Pause a cron schedule: it fires no ticks on either backend until resumed (its pg_cron job is
        deactivated; `cron_dsn`: where pg_cron lives when it is another database). Returns since when it is
        paused; ScheduleNotFound when there is no such schedule."""
        async with self._cron_db(cron_dsn) as cron_db:
            return await cron.pause_schedule(self.db, name, cron_db=cron_db)

    async def resume_schedule(self, name: str, *, cron_dsn: str | None = None) -> bool:
        """Resume a paused schedule; whether it was paused. The ticks it missed follow its `catch_up` policy
        ('skip': none fires; 'once': the latest fires once)."""
        async with self._cron_db(cron_dsn) as cron_db:
            return await cron.resume_schedule(self.db, name, cron_db=cron_db)

    async def remove_schedule(self, name: str, *, cron_dsn: str | None = None) -> bool:
        """Delete a schedule with its recorded ticks and its pg_cron job (also one whose flow no longer exists);
        whether a pg_cron job went too. ScheduleNotFound when there is no such schedule."""
        async with self._cron_db(cron_dsn) as cron_db:
            return await cron.remove_schedule(self.db, name, cron_db=cron_db)

    # ---- retention -----------------------------------------------------------------------------------------
    async def prune_runs(
        self,
        *,
        older_than: float | datetime.timedelta | str,
        status: PruneStatus = "all",
        flow: FlowRef | None = None,
        dry_run: bool = False,
        batch_size: int = 500,
    ) -> PruneReport:
        """DELETE finished runs (`status`: completed, failed or all) that finished more than `older_than` ago
        (seconds, a timedelta, or '30m', '12h', '7d'), with their step states, tasks and pgmq messages, and the
        archived messages older than that whose run is gone. A started run is never touched, whatever its age.

        `batch_size` runs per short transaction, which skips runs a worker has locked and pauses between batches,
        so workers are never starved. `dry_run=True` counts what would go and deletes nothing."""
        slug = None if flow is None else _slug_of(flow)
        return await prune_runs(
            self.db, older_than=older_than, status=status, flow_slug=slug, dry_run=dry_run, batch_size=batch_size
        )

    # ---- workers -------------------------------------------------------------------------------------------
    async def serve(
        self,
        *targets: ServeTarget,
        options: WorkerOptions | None = None,
        cron_dsn: str | None = None,
        task_status: trio.TaskStatus[WorkerGroup] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run workers for `targets` on this engine's database until stopped or cancelled (`nursery.start`).

        `cron_dsn`: the database where pg_cron is installed when it is another one (its `cron.database_name`),
        opened with the engine's `connect_timeout` (when set; else that DSN's own, $PGFLOW_CONNECT_TIMEOUT or 10 s)."""
        opts = options or WorkerOptions(otel=self.options.otel)
        if cron_dsn is None:
            await run_workers(self.db, targets, opts, task_status=task_status)
            return
        async with open_database(cron_dsn, max_size=2, connect_timeout=self.options.connect_timeout) as cron_db:
            await run_workers(self.db, targets, opts, cron_db=cron_db, task_status=task_status)


@asynccontextmanager
async def open_engine(
    dsn: str | None = None,
    *,
    pool_size: int = 10,
    events: bool = True,
    recheck_interval: float = 5.0,
    poll_interval: float = 0.2,
    stale_after: float = 30.0,
    check_schema: bool = True,
    data_dir: Path | None = None,
    connect_timeout: float | None = None,
    driver: DriverChoice | None = None,
    install: bool = False,
    otel: bool = False,
) -> AsyncIterator[Engine]:
    """Connect to the pgflow database (`dsn`, else PGFLOW_DSN, else the embedded PostgreSQL) for the block.

    The options are those of `EngineOptions` (validated: ConfigurationError names a bad one). `install=True`
    installs or completes the schema when it is incomplete (as `python -m pgflow_trio db install` does: it fetches
    pgflow core with npm unless cached); off by default, so an application never changes a database's schema
    unasked. Without it, an incomplete schema raises SchemaError naming the fix. `otel=True` traces starts with
    OpenTelemetry (the `otel` extra; see EngineOptions.otel)."""
    opts = EngineOptions(
        pool_size=pool_size,
        events=events,
        recheck_interval=recheck_interval,
        poll_interval=poll_interval,
        stale_after=stale_after,
        check_schema=check_schema,
        data_dir=data_dir,
        connect_timeout=connect_timeout,
        driver=driver,
        otel=otel,
    )
    if not isinstance(install, bool):
        raise ConfigurationError(f"engine option install must be True or False, got {install!r}")
    async with unwrap_single_errors():
        resolved = await resolve_dsn(dsn, data_dir=opts.data_dir)
        async with (
            open_database(
                resolved, max_size=opts.pool_size, connect_timeout=opts.connect_timeout, driver=opts.driver
            ) as db,
            trio.open_nursery() as nursery,
        ):
            if install and not (await check(db)).ok:
                await install_into(db)
            if opts.check_schema:
                await _require_schema(db)
            engine = Engine(db, opts)
            if opts.events:
                await nursery.start(engine._hub.run, db)
            try:
                yield engine
            finally:
                nursery.cancel_scope.cancel()
