"""Managing flows in the database (list, get, delete, upsert, pause and resume their queues) and checking health."""

from __future__ import annotations

import functools

from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._exceptions import ConfigurationError, FlowNotFound
from pgflow_trio._models import FlowInfo, Health, QueueHealth, QueuePause
from pgflow_trio._store import Database
from pgflow_trio._store import _flows as store
from pgflow_trio._store._flows import UpsertOutcome
from pgflow_trio._store._health import queue_health
from pgflow_trio._store._pauses import pause_queue, resume_queue
from pgflow_trio._store._runs import checked_slug
from pgflow_trio._store._schema import check


async def list_flows(db: Database) -> list[FlowInfo]:
    return await db.run(store.list_flows)


async def flow_from_database(db: Database, slug: str) -> FlowDef:
    """The flow as the database holds it, as a FlowDef (plain data: no handlers, no types)."""
    flow = await db.run(functools.partial(store.read_flow, slug=checked_slug(slug)))
    if flow is None:
        raise FlowNotFound(f"there is no flow {slug!r} in the database")
    return flow


async def flow_exists(db: Database, slug: str) -> bool:
    return await db.run(functools.partial(store.flow_exists, slug=checked_slug(slug)))


async def delete_flow(db: Database, slug: str, *, force: bool, stale_after: float) -> dict[str, int]:
    """Delete a flow with its runs, tasks and queue. Refuses while live workers serve it unless `force`."""
    return await db.run(
        functools.partial(store.delete_flow, slug=checked_slug(slug), force=force, stale_after=stale_after)
    )


async def upsert_flow(
    db: Database, flow: FlowDef, *, force: bool, stale_after: float
) -> tuple[UpsertOutcome, dict[str, int]]:
    """Create the flow, or replace a different one of the same slug. Returns the outcome and, when replaced, how
    many rows went per table.

    Replacing DELETES the old flow's runs and tasks (pgflow flows are immutable)."""
    return await db.run(functools.partial(store.upsert_flow, flow=flow, force=force, stale_after=stale_after))


async def pause(db: Database, slug: str, *, reason: str | None) -> QueuePause:
    """Pause flow `slug`'s queue: our workers stop reading it (running tasks finish); runs can still be started.
    FlowNotFound when there is no such flow; pausing a paused queue keeps its first instant."""
    if reason is not None and not isinstance(reason, str):
        raise ConfigurationError(f"reason must be a string or None, got {reason!r}")
    return await db.run(functools.partial(pause_queue, queue=checked_slug(slug), reason=reason))


async def resume(db: Database, slug: str) -> bool:
    """Resume flow `slug`'s queue; whether it was paused. FlowNotFound when there is no such flow."""
    return await db.run(functools.partial(resume_queue, queue=checked_slug(slug)))


def _pause_warning(q: QueueHealth) -> str | None:
    if q.paused is None:
        return None
    why = f" ({q.paused.reason})" if q.paused.reason else ""
    waiting = f"; {q.visible} message(s) wait for it to be resumed" if q.visible else ""
    return f"queue {q.queue}: paused since {q.paused.since.isoformat(timespec='seconds')}{why}{waiting}"


def _queue_problems(q: QueueHealth, *, max_age: float | None, require_workers: bool) -> list[str]:
    if q.paused is not None:
        return []  # waiting work is what a pause is for
    problems = []
    waited = "" if q.oldest_visible_age is None else f", the oldest for {q.oldest_visible_age:.0f}s,"
    if require_workers and q.visible and not q.workers_alive:
        problems.append(f"queue {q.queue}: {q.visible} message(s) waiting{waited} and no live worker")
    elif max_age is not None and q.oldest_visible_age is not None and q.oldest_visible_age > max_age:
        problems.append(
            f"queue {q.queue}: a message has waited {q.oldest_visible_age:.0f}s for a worker (max age {max_age:g}s)"
        )
    return problems


async def health(db: Database, *, stale_after: float, max_age: float | None, require_workers: bool) -> Health:
    """Database reachable, schema complete, and per queue: live/stale workers, depth, and how long visible work
    has waited. Work that no live worker serves, or that waited longer than `max_age` seconds, is a problem, except
    in a paused queue (a warning saying since when it is paused)."""
    try:
        status = await check(db)
    except Exception as exc:
        return Health(False, f"unreachable: {exc}", None, None, None, (), (f"database unreachable: {exc}",))
    problems = list(status.problems)
    warnings: list[str] = []
    queues: list[QueueHealth] = []
    if status.core_version is not None:
        queues = await db.run(functools.partial(queue_health, stale_after=stale_after))
        for q in queues:
            problems.extend(_queue_problems(q, max_age=max_age, require_workers=require_workers))
            if q.workers_stale:
                warnings.append(f"queue {q.queue}: {q.workers_stale} worker(s) stopped heartbeating")
            paused = _pause_warning(q)
            if paused is not None:
                warnings.append(paused)
    return Health(
        ok=not problems,
        database="reachable",
        server_version=status.server_version,
        core_version=status.core_version,
        schema_version=status.schema_version,
        queues=tuple(queues),
        problems=tuple(problems),
        warnings=tuple(warnings),
    )
