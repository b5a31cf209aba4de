"""Retention: pruning finished runs in bounded batches, and the optional pruner that worker processes run.

pgflow keeps every run, step state, task and archived message forever. `prune` deletes those of runs that finished
before a cutoff (the database clock's now minus `older_than`, fixed when the call starts, so a stream of runs
finishing meanwhile cannot keep it going), a batch of runs per short transaction, pausing between batches at least
as long as the last one took, so it holds no lock for long and leaves workers most of the database. It then sweeps
the archive for rows older than the cutoff whose run no longer exists.

The `Pruner` runs in every worker process that asks for it; one leads (a session-level advisory lock on a dedicated
connection, as the built-in cron scheduler does) and prunes every `interval` seconds; when its process or connection
dies, the lock is free and another takes over. Two pruners at once would still be safe (batches skip each other's
locked runs): leading only saves the work.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import re

import trio

from pgflow_trio._exceptions import ConfigurationError, PgflowError
from pgflow_trio._models import PruneReport, PruneStatus
from pgflow_trio._store import Database
from pgflow_trio._store import _retention as store
from pgflow_trio._store._schedules import check_session, try_lead

log = logging.getLogger("pgflow_trio.pruner")

LEADER_LOCK = 7_301_946_210_553_118_107
"""The pruner's session advisory lock (the cron scheduler's is ...002, the schedule sync lock ...003)."""

DEFAULT_BATCH_SIZE = 500
MIN_PAUSE = 0.05
"""Seconds between two batches at least; a batch that took longer is followed by a pause as long as it took."""
SWEEP_SCAN = 5000
"""Archive rows one sweep statement looks at."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str, *, what: str | None = None) -> float:
    """Seconds in `text`: a number of seconds (`90`, `1.5`) or a number with a unit: `30s`, `30m`, `12h`, `7d`, `2w`.
    ConfigurationError otherwise (its message starts with `what: ` when given)."""
    match = _DURATION.match(text)
    if match is None:
        problem = f"{text!r} is not a duration; write seconds (3600) or a number and a unit: 30s, 30m, 12h, 7d, 2w"
        raise ConfigurationError(f"{what}: {problem}" if what else problem)
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def seconds_of(value: object, *, what: str) -> float:
    """`value` (seconds as a number, a timedelta, or a duration string) as seconds >= 0, else ConfigurationError."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        seconds = parse_duration(value, what=what)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(f"{what} must be seconds, a timedelta or a duration such as '7d', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"{what} must be a finite duration >= 0, got {value!r}")
    return seconds


def describe(seconds: float) -> str:
    """`seconds` in the largest whole unit: 604800 -> '7d', 90 -> '90s'."""
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


async def prune(
    db: Database,
    *,
    older_than: float,
    status: PruneStatus = "all",
    flow_slug: str | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    min_pause: float = MIN_PAUSE,
) -> PruneReport:
    """Delete the finished runs (of `status`, of flow `flow_slug` when given) that finished more than `older_than`
    seconds ago, with their step states, tasks and messages, `batch_size` runs per transaction; then the archive
    rows older than that whose run is gone. `dry_run`: count what would go, deleting nothing."""
    cutoff = await db.run(functools.partial(store.cutoff, older_than=older_than))
    if dry_run:
        report = await db.run(
            functools.partial(store.count_prunable, cutoff=cutoff, status=status, flow_slug=flow_slug)
        )
    else:
        report = await _delete_runs(db, cutoff, status, flow_slug, batch_size, min_pause)
    for queue in await db.run(functools.partial(store.queues, flow_slug=flow_slug)):
        report = report.plus(await _sweep(db, queue, cutoff, dry_run, min_pause))
    return report


async def _delete_runs(
    db: Database, cutoff: datetime.datetime, status: PruneStatus, flow_slug: str | None, batch_size: int, pause: float
) -> PruneReport:
    report = PruneReport(cutoff)
    while True:
        began = trio.current_time()
        batch = await db.run(
            functools.partial(store.prune_batch, cutoff=cutoff, status=status, flow_slug=flow_slug, limit=batch_size)
        )
        report = report.plus(batch)
        if batch.skipped_batches or batch.runs < batch_size:
            return report  # done, or a worker holds a lock: what is left goes on the next pass
        await trio.sleep(max(pause, trio.current_time() - began))


async def _sweep(db: Database, queue: str, cutoff: datetime.datetime, dry_run: bool, pause: float) -> PruneReport:
    report = PruneReport(cutoff, dry_run=dry_run)
    after: int | None = 0
    while after is not None:
        began = trio.current_time()
        gone, after = await db.run(
            functools.partial(
                store.sweep_archive, queue=queue, cutoff=cutoff, after=after, limit=SWEEP_SCAN, dry_run=dry_run
            )
        )
        report = report.plus(PruneReport(cutoff, archived_messages=gone))
        if after is not None:
            await trio.sleep(max(pause, trio.current_time() - began))
    return report


class Pruner:
    """Prunes finished runs every `interval` seconds while it leads. Run one in every worker process that should
    take part: one of them leads (advisory lock), the others stand by and take over when it dies."""

    def __init__(
        self,
        db: Database,
        *,
        older_than: float,
        status: PruneStatus = "all",
        interval: float = 600.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.older_than = older_than
        self.status: PruneStatus = status
        self.interval = interval
        self.batch_size = batch_size
        self.retry_interval = retry_interval
        """Seconds between attempts to take the lead (and to reconnect after losing the database)."""
        self.leading = False
        self.terms = 0
        """How many times this pruner has become the leader."""
        self.passes = 0
        self.last_report: PruneReport | None = None

    async def run(self, *, task_status: trio.TaskStatus[Pruner] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        while True:
            try:
                await self._campaign()
            except PgflowError as exc:
                log.warning("pruner: %s; retrying", exc)
            self.leading = False
            await trio.sleep(self.retry_interval)

    async def _campaign(self) -> None:
        """Hold the leader lock on a dedicated session while pruning; return when the session is lost."""
        async with self.db.dedicated_session() as session:
            while not session.lost.is_set():
                if await try_lead(session, LEADER_LOCK):
                    break
                await trio.sleep(self.retry_interval)
            else:
                return
            self.leading = True
            self.terms += 1
            log.info(
                "pruner: leading; pruning %s runs finished more than %s ago every %s",
                self.status,
                describe(self.older_than),
                describe(self.interval),
            )
            while not session.lost.is_set():
                with trio.CancelScope() as scope:
                    # a pass stops when the lock is lost: another pruner leads now
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_cancel_when_set, session.lost, scope)
                        await self._pass()
                        nursery.cancel_scope.cancel()
                if scope.cancelled_caught:
                    return
                with trio.move_on_after(self.interval):
                    await session.lost.wait()
                await check_session(session)  # the termination listener may lag

    async def _pass(self) -> None:
        report = await prune(self.db, older_than=self.older_than, status=self.status, batch_size=self.batch_size)
        self.passes += 1
        self.last_report = report
        skipped = f"; {report.skipped_batches} batch(es) waited on a lock, left for the next pass"
        log.info("pruner: %s%s", report.summary(), skipped if report.skipped_batches else "")


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
