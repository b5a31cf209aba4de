"""Operating runs: cancel, retry in place, rerun (the SQL functions of migration 0005), and selecting runs for the
bulk forms. Each function runs inside asyncio on one connection; each operation on a run is one transaction."""

from __future__ import annotations

import asyncio
import datetime
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Literal, TypeVar

import asyncpg

from pgflow_trio._exceptions import FlowChanged, RunNotActive, RunNotFound, RunNotRetryable
from pgflow_trio._models import Cancellation
from pgflow_trio._store import RawConnection

NO_RUN = "PF001"
WRONG_STATE = "PF002"
FLOW_CHANGED = "PF003"


def _described(exc: asyncpg.PostgresError) -> str:
    """The server's message with its hint, as one line."""
    message = str(getattr(exc, "message", None) or exc)
    hint = getattr(exc, "hint", None)
    return f"{message}: {hint}" if hint else message


@contextmanager
def _typed_errors(run_id: uuid.UUID, operation: Literal["cancel", "retry", "rerun"]) -> Iterator[None]:
    """Our functions' own SQLSTATEs as typed errors (the driver's error as the cause)."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        state = getattr(exc, "detail", None) or "unknown"
        if exc.sqlstate == NO_RUN:
            raise RunNotFound(f"there is no run {run_id}") from exc
        if exc.sqlstate == WRONG_STATE and operation == "cancel":
            raise RunNotActive(_described(exc), run_id=run_id, state=state) from exc
        if exc.sqlstate == WRONG_STATE:
            raise RunNotRetryable(_described(exc), run_id=run_id, state=state) from exc
        if exc.sqlstate == FLOW_CHANGED:
            raise FlowChanged(_described(exc), run_id=run_id, differences=state) from exc
        raise


T = TypeVar("T")

_CONFLICT_ATTEMPTS = 5


async def _through_conflicts(statement: Callable[[], Awaitable[T]]) -> T:
    """Run a one-transaction statement again (up to 5 times) when PostgreSQL aborted it to break a deadlock. Cancel
    and retry lock run, step states, tasks, as pgflow's complete_task does; pgflow's fail_task (a TypeScript
    worker's report) takes them the other way round, so the two can deadlock, and either side may be the one
    aborted. Nothing of an aborted attempt remains."""
    for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
        try:
            return await statement()
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == _CONFLICT_ATTEMPTS:
                raise
            await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable")


async def cancel_run(con: RawConnection, *, run_id: uuid.UUID, reason: str | None, by: str | None) -> Cancellation:
    """Cancel one started run (pgflow_trio.cancel_run: one transaction)."""
    with _typed_errors(run_id, "cancel"):
        row = await _through_conflicts(
            lambda: con.fetchrow(
                "SELECT reason, cancelled_by, cancelled_at FROM pgflow_trio.cancel_run($1, $2, $3)", run_id, reason, by
            )
        )
    assert row is not None
    return Cancellation(run_id=run_id, reason=row["reason"], by=row["cancelled_by"], at=row["cancelled_at"])


async def retry_run(con: RawConnection, *, run_id: uuid.UUID) -> int:
    """Retry one failed or cancelled run in place (pgflow_trio.retry_run: one transaction); the tasks requeued."""
    with _typed_errors(run_id, "retry"):
        requeued: int = await _through_conflicts(lambda: con.fetchval("SELECT pgflow_trio.retry_run($1)", run_id))
    return requeued


async def rerun(con: RawConnection, *, run_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    """Start a new run with the flow and input of `run_id`, linked to it. Returns (new run id, flow slug)."""
    with _typed_errors(run_id, "rerun"):
        async with con.transaction():
            new_id: uuid.UUID = await con.fetchval("SELECT pgflow_trio.rerun($1)", run_id)
            slug: str = await con.fetchval("SELECT flow_slug FROM pgflow.runs WHERE run_id = $1", new_id)
    return new_id, slug


async def cancellation_of(con: RawConnection, *, run_id: uuid.UUID) -> Cancellation | None:
    row = await con.fetchrow(
        "SELECT reason, cancelled_by, cancelled_at FROM pgflow_trio.run_cancellations WHERE run_id = $1", run_id
    )
    if row is None:
        return None
    return Cancellation(run_id=run_id, reason=row["reason"], by=row["cancelled_by"], at=row["cancelled_at"])


SelectableState = Literal["started", "failed", "cancelled"]


async def select_runs(
    con: RawConnection,
    *,
    flow_slug: str,
    state: SelectableState,
    started_before: datetime.datetime | None,
) -> list[uuid.UUID]:
    """Ids of the flow's runs in `state` (failed excludes cancelled runs), oldest first."""
    condition = {
        "started": "r.status = 'started'",
        "failed": "r.status = 'failed' AND c.run_id IS NULL",
        "cancelled": "r.status = 'failed' AND c.run_id IS NOT NULL",
    }[state]
    rows = await con.fetch(
        f"""SELECT r.run_id FROM pgflow.runs AS r
            LEFT JOIN pgflow_trio.run_cancellations AS c ON c.run_id = r.run_id
            WHERE r.flow_slug = $1 AND {condition} AND ($2::timestamptz IS NULL OR r.started_at < $2)
            ORDER BY r.started_at, r.run_id""",
        flow_slug,
        started_before,
    )
    return [r["run_id"] for r in rows]


async def flow_exists(con: RawConnection, *, flow_slug: str) -> bool:
    return bool(await con.fetchval("SELECT EXISTS (SELECT 1 FROM pgflow.flows WHERE flow_slug = $1)", flow_slug))
