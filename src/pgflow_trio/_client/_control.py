"""Operating runs from the client: cancel, retry in place and rerun, one run or a flow's runs in bulk (one
transaction per run). The engine's methods of the same names call these."""

from __future__ import annotations

import datetime
import functools
import logging
import time
import uuid

from pgflow_trio._exceptions import (
    ConfigurationError,
    ConnectionLost,
    DatabaseError,
    FlowChanged,
    FlowNotFound,
    PgflowError,
    RunNotActive,
    RunNotFound,
    RunNotRetryable,
)
from pgflow_trio._models import BulkOutcome, Cancellation
from pgflow_trio._observe._events import RunCancel, RunComplete, RunStart, emit, wanted
from pgflow_trio._observe._logging import run_fields
from pgflow_trio._store import Database
from pgflow_trio._store import _control as sql
from pgflow_trio._store._lifecycle import run_origins

log = logging.getLogger("pgflow_trio.engine")

RETRYABLE_STATES = ("failed", "cancelled")


def _optional_text(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string or None, got {type(value).__name__}")
    return value


def _aware(name: str, value: object) -> datetime.datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ConfigurationError(
            f"{name} must be a timezone-aware datetime (e.g. datetime.now(timezone.utc) - timedelta(hours=1)), "
            f"got {value!r}"
        )
    return value


def run_started(run_id: uuid.UUID, flow_slug: str, *, completed: bool = False) -> None:
    """run.started for a run this process's engine stored (started, enqueued or rerun); and run.completed when
    it completed as it started (a flow whose maps were all empty)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("started run %s of %s", run_id, flow_slug, extra=run_fields(run_id, flow_slug))
    if wanted(RunStart):
        emit(RunStart(at=time.time(), run_id=run_id, flow_slug=flow_slug))
    if completed and wanted(RunComplete):
        emit(RunComplete(at=time.time(), run_id=run_id, flow_slug=flow_slug, duration=0.0))


async def _cancelled(db: Database, cancellations: list[Cancellation], flow_slug: str | None = None) -> None:
    """Log each cancellation, and emit run.cancelled for it (reading the runs' flows and start times, only when
    someone listens)."""
    origins = {}
    if wanted(RunCancel) and cancellations:
        try:
            origins = await db.run(functools.partial(run_origins, run_ids=[c.run_id for c in cancellations]))
        except PgflowError as exc:  # the cancellations committed: only the events' durations are lost
            log.warning("reading the cancelled runs for run.cancelled failed: %s", exc)
    for c in cancellations:
        origin = origins.get(c.run_id)
        slug = origin.flow_slug if origin is not None else flow_slug
        log.info("cancelled run %s (reason: %s, by: %s)", c.run_id, c.reason, c.by, extra=run_fields(c.run_id, slug))
        if wanted(RunCancel):
            duration = (c.at - origin.started_at).total_seconds() if origin is not None else 0.0
            emit(
                RunCancel(
                    at=time.time(),
                    run_id=c.run_id,
                    flow_slug=slug or "",
                    duration=max(0.0, duration),
                    reason=c.reason,
                    by=c.by,
                )
            )


async def cancel_run(db: Database, run_id: uuid.UUID, *, reason: object, by: object) -> Cancellation:
    cancellation: Cancellation = await db.run(
        functools.partial(
            sql.cancel_run, run_id=run_id, reason=_optional_text("reason", reason), by=_optional_text("by", by)
        )
    )
    await _cancelled(db, [cancellation])
    return cancellation


async def _require_flow(db: Database, slug: str) -> None:
    if not await db.run(functools.partial(sql.flow_exists, flow_slug=slug)):
        raise FlowNotFound(f"there is no flow {slug!r} in the database")


async def cancel_runs(
    db: Database,
    *,
    flow_slug: str,
    started_before: object,
    reason: object,
    by: object,
    dry_run: bool,
) -> BulkOutcome:
    """Cancel every started run of the flow (started before `started_before`), one transaction per run. A run that
    finished in the meantime, or whose cancel the database refused, is skipped with the reason; a lost connection
    stops the loop."""
    before = _aware("started_before", started_before)
    text, who = _optional_text("reason", reason), _optional_text("by", by)
    await _require_flow(db, flow_slug)
    ids = await db.run(functools.partial(sql.select_runs, flow_slug=flow_slug, state="started", started_before=before))
    if dry_run:
        return BulkOutcome(tuple(ids), dry_run=True)
    done: list[uuid.UUID] = []
    skipped: list[tuple[uuid.UUID, str]] = []
    for run_id in ids:
        try:
            cancellation = await db.run(functools.partial(sql.cancel_run, run_id=run_id, reason=text, by=who))
        except ConnectionLost:
            raise
        except (RunNotActive, RunNotFound, DatabaseError) as exc:
            skipped.append((run_id, str(exc)))
        else:
            done.append(run_id)
            await _cancelled(db, [cancellation], flow_slug)
    return BulkOutcome(tuple(done), tuple(skipped))


async def retry_run(db: Database, run_id: uuid.UUID) -> int:
    return await db.run(functools.partial(sql.retry_run, run_id=run_id))


async def retry_runs(
    db: Database, *, flow_slug: str, status: object, started_before: object, dry_run: bool
) -> BulkOutcome:
    """Retry every failed (or every cancelled) run of the flow in place, one transaction per run. Runs whose state
    changed meanwhile, or whose flow changed shape, are skipped with the reason."""
    if status not in RETRYABLE_STATES:
        raise ConfigurationError(
            f"status must be 'failed' or 'cancelled' (only those runs can be retried), got {status!r}"
        )
    state: sql.SelectableState = "failed" if status == "failed" else "cancelled"
    before = _aware("started_before", started_before)
    await _require_flow(db, flow_slug)
    ids = await db.run(functools.partial(sql.select_runs, flow_slug=flow_slug, state=state, started_before=before))
    if dry_run:
        return BulkOutcome(tuple(ids), dry_run=True)
    done: list[uuid.UUID] = []
    skipped: list[tuple[uuid.UUID, str]] = []
    for run_id in ids:
        try:
            await db.run(functools.partial(sql.retry_run, run_id=run_id))
        except ConnectionLost:
            raise
        except (RunNotRetryable, RunNotFound, FlowChanged, DatabaseError) as exc:
            skipped.append((run_id, str(exc)))
        else:
            done.append(run_id)
    return BulkOutcome(tuple(done), tuple(skipped))


async def rerun(db: Database, run_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    new_id, slug = await db.run(functools.partial(sql.rerun, run_id=run_id))
    run_started(new_id, slug)
    return new_id, slug
