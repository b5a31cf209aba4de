"""Paused queues (`pgflow_trio.queue_pauses`): pausing and resuming a flow's queue, and the worker's read that
honours a pause. Each function is one unit of work run inside asyncio on one connection (`Database.run`)."""

from __future__ import annotations

import uuid

import attrs

from pgflow_trio._exceptions import FlowNotFound
from pgflow_trio._models import QueuePause
from pgflow_trio._store import RawConnection
from pgflow_trio._store._flows import flow_exists
from pgflow_trio._store._worker_queries import ReadResult, _details, queue_table


@attrs.frozen
class PausableRead(ReadResult):
    """A read of a queue that may be paused: `paused` says the queue was paused when the read found nothing."""

    paused: bool = False


async def _require_flow(con: RawConnection, slug: str) -> None:
    if not await flow_exists(con, slug=slug):
        raise FlowNotFound(f"there is no flow {slug!r} in the database (python -m pgflow_trio flows list)")


async def pause_queue(con: RawConnection, *, queue: str, reason: str | None) -> QueuePause:
    """Pause the queue of flow `queue` (FlowNotFound when there is no such flow); its workers are told at once.
    Pausing a paused queue keeps its first instant (and takes the new reason when one is given)."""
    async with con.transaction():
        await _require_flow(con, queue)
        row = await con.fetchrow("SELECT paused_at, reason FROM pgflow_trio.pause_queue($1, $2)", queue, reason)
    assert row is not None
    return QueuePause(row["paused_at"], row["reason"])


async def resume_queue(con: RawConnection, *, queue: str) -> bool:
    """Resume the queue of flow `queue` (FlowNotFound when there is no such flow); whether it was paused."""
    async with con.transaction():
        await _require_flow(con, queue)
        was_paused: bool = await con.fetchval("SELECT pgflow_trio.resume_queue($1)", queue)
    return was_paused


async def queue_pause(con: RawConnection, *, queue: str) -> QueuePause | None:
    """The pause of `queue`, or None when it is not paused."""
    row = await con.fetchrow("SELECT paused_at, reason FROM pgflow_trio.queue_pauses WHERE queue = $1", queue)
    return None if row is None else QueuePause(row["paused_at"], row["reason"])


_CLAIM = (
    "SELECT run_id, step_slug, task_index, msg_id, input::text AS input FROM pgflow.start_tasks($1, {ids}, $2::uuid)"
)


async def read_and_claim_unless_paused(
    con: RawConnection,
    *,
    queue: str,
    worker_id: uuid.UUID,
    qty: int,
    visibility: int,
    poll_seconds: float | None,
    poll_interval_ms: int,
    want_next_visible: bool,
) -> PausableRead:
    """`read_and_claim`, reading nothing while the queue is paused.

    Notify mode reads and starts the tasks in one statement (`pgflow_trio.read_to_start` inside
    `pgflow.start_tasks`; it hands back what was queued after the statement's transaction began, see schema 10).
    Poll mode long-polls in a statement of its own (`pgflow_trio.read_with_poll_unless_paused`, which looks at the
    pause again every `poll_interval_ms`, so a pause committed during the poll stops it from reading within one
    interval); start_tasks stamps `started_at = now()`, which must not precede the task's `queued_at`. When
    nothing was read, one more statement says whether
    the queue is paused (and, if asked, when the next invisible message becomes visible)."""
    if poll_seconds is None:
        rows = await con.fetch(
            _CLAIM.format(ids="pgflow_trio.read_to_start($1, $3, $4)"), queue, worker_id, visibility, qty
        )
    else:
        ids: list[int] = await con.fetchval(
            "SELECT pgflow_trio.read_with_poll_unless_paused($1, $2, $3, $4, $5)",
            queue,
            visibility,
            qty,
            max(poll_seconds, 0.001),
            poll_interval_ms,
        )
        rows = await con.fetch(_CLAIM.format(ids="$3::bigint[]"), queue, worker_id, ids) if ids else []
    tasks = await _details(con, rows, queue)
    if rows:
        return PausableRead(tasks, len(rows), None)
    next_visible = "NULL::float8"
    if want_next_visible:
        next_visible = (
            f"(SELECT extract(epoch FROM min(vt) - clock_timestamp())::float8 FROM {queue_table(queue)} "
            "WHERE vt > clock_timestamp())"
        )
    state = await con.fetchrow(
        f"SELECT EXISTS (SELECT 1 FROM pgflow_trio.queue_pauses WHERE queue = $1) AS paused, {next_visible} AS next",
        queue,
    )
    assert state is not None
    return PausableRead(tasks, 0, state["next"], paused=state["paused"])
