"""The runtime: workers (read, claim, run each task under its cancel scope, complete or fail it, recover abandoned
tasks, stop gracefully), the cron scheduler, and inline runs.

May import `_store`, `_definitions` and the layers below them; never `_client` or `_cli`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from pgflow_trio._exceptions import DefinitionError, FlowMismatch
from pgflow_trio._observe._hooks import run_metrics
from pgflow_trio._runtime._options import CronBackend, Signal, WorkerOptions
from pgflow_trio._runtime._worker import RawHandler, Served, ServeTarget, Worker, WorkerStats, served
from pgflow_trio._store import Database, DriverChoice, open_database
from pgflow_trio._store._dsn import resolve_dsn
from pgflow_trio._store._registry import ensure_flow
from pgflow_trio._store._schema import require_complete
from pgflow_trio._util import unwrap_single_errors

if TYPE_CHECKING:
    from pgflow_trio._runtime._cron import SyncReport
    from pgflow_trio._runtime._pruner import Pruner

log = logging.getLogger("pgflow_trio.worker")


class WorkerGroup:
    """The workers `serve` runs; `stop()` drains them all (and stops the process's scheduler).

    `schedules` says what the start-up schedule sync did and which backend each schedule got (None when
    `sync_schedules` is off). `pruner` is this process's pruner (None unless `prune_older_than` is set)."""

    def __init__(
        self,
        workers: Sequence[Worker],
        on_stop: Callable[[], None] | None = None,
        schedules: SyncReport | None = None,
        pruner: Pruner | None = None,
    ) -> None:
        self.workers = tuple(workers)
        self.schedules = schedules
        self.pruner = pruner
        self.metrics_port: int | None = None
        """The port of this group's Prometheus endpoint (None without one)."""
        self._on_stop = on_stop

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self._on_stop is not None:
            self._on_stop()


async def run_workers(
    db: Database,
    targets: Sequence[ServeTarget],
    options: WorkerOptions,
    *,
    cron_db: Database | None = None,
    task_status: trio.TaskStatus[WorkerGroup] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Workers for `targets` on `db`, plus schedule sync and the built-in scheduler, until stopped or cancelled.

    `cron_db`: the database where pg_cron is installed when it is not `db` (pg_cron's `cron.database_name`)."""
    from pgflow_trio._runtime._cron import Scheduler, sync_schedules

    if not targets:
        raise DefinitionError("serve() needs at least one flow or job")
    workers = [Worker(db, target, options) for target in targets]
    await require_complete(db)
    scheduling = trio.CancelScope()

    async def schedule() -> None:
        with scheduling:
            await Scheduler(db, grace=options.scheduler_grace).run()

    pruning = trio.CancelScope()
    pruner = _pruner_for(db, options)
    measuring = trio.CancelScope()

    async def prune() -> None:
        with pruning:
            assert pruner is not None
            await pruner.run()

    def stop_services() -> None:
        scheduling.cancel()
        pruning.cancel()
        measuring.cancel()

    async with trio.open_nursery() as services:
        metrics_port = None
        if options.otel or options.metrics_port is not None:
            metrics_port = await services.start(_measure, db, options, measuring)
        if options.scheduler:
            services.start_soon(schedule)
        if pruner is not None:
            services.start_soon(prune)
        async with trio.open_nursery() as nursery:
            for worker in workers:
                await nursery.start(worker.run)
            report = None
            if options.sync_schedules:
                report = await sync_schedules(
                    db, [w.flow for w in workers], backend=options.cron_backend, cron_db=cron_db
                )
                if report.backends:
                    log.info(
                        "schedules: %s", ", ".join(f"{name} ({how})" for name, how in sorted(report.backends.items()))
                    )
            group = WorkerGroup(workers, on_stop=stop_services, schedules=report, pruner=pruner)
            group.metrics_port = metrics_port
            task_status.started(group)
        stop_services()  # every worker has stopped (stop(), or deprecated by the database)


async def _measure(
    db: Database, options: WorkerOptions, scope: trio.CancelScope, *, task_status: trio.TaskStatus[int | None]
) -> None:
    """Metrics while the workers run (OpenTelemetry instruments, the Prometheus endpoint, their gauges)."""
    with scope:
        await run_metrics(
            db,
            otel=options.otel,
            port=options.metrics_port,
            host=options.metrics_host,
            interval=options.metrics_interval,
            stale_after=options.stale_after,
            task_status=task_status,
        )


def _pruner_for(db: Database, options: WorkerOptions) -> Pruner | None:
    """The pruner `options` ask for (`prune_older_than` set), else None."""
    from pgflow_trio._runtime._pruner import Pruner

    if options.prune_older_than is None:
        return None
    return Pruner(
        db,
        older_than=options.prune_older_than,
        status=options.prune_status,
        interval=options.prune_interval,
        batch_size=options.prune_batch_size,
    )


async def serve(
    *targets: ServeTarget,
    dsn: str | None = None,
    options: WorkerOptions | None = None,
    data_dir: Path | None = None,
    cron_dsn: str | None = None,
    driver: DriverChoice | None = None,
    task_status: trio.TaskStatus[WorkerGroup] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve each target (flow/job class or instance, or `(FlowDef, {step: handler})`) until stopped or cancelled.

    `await nursery.start(serve, ProcessOrder)` returns a `WorkerGroup` once every worker is registered and reading.
    `cron_dsn`: the database where pg_cron is installed, when it is another one (its `cron.database_name`).
    `driver`: how Trio reaches asyncpg (`auto`, `trio-asyncio`, `thread`; default $PGFLOW_DRIVER, else auto).
    """
    opts = options or WorkerOptions()
    prepared = [served(t) for t in targets]
    if not prepared:
        raise ValueError("serve() needs at least one flow or job")
    async with unwrap_single_errors():
        resolved = await resolve_dsn(dsn, data_dir=data_dir)
        pool_size = min(100, len(prepared) * (opts.concurrency + 4) + 2)
        async with open_database(resolved, max_size=pool_size, driver=driver) as db:
            if cron_dsn is None:
                await run_workers(db, prepared, opts, task_status=task_status)
                return
            async with open_database(cron_dsn, max_size=2, driver=driver) as cron_db:
                await run_workers(db, prepared, opts, cron_db=cron_db, task_status=task_status)


__all__ = [
    "CronBackend",
    "FlowMismatch",
    "RawHandler",
    "ServeTarget",
    "Served",
    "Signal",
    "Worker",
    "WorkerGroup",
    "WorkerOptions",
    "WorkerStats",
    "ensure_flow",
    "run_workers",
    "serve",
    "served",
]
