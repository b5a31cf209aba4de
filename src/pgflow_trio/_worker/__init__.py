"""Workers: run flows' and jobs' tasks from the database, several in one process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import trio

from .._db import open_database
from .._dsn import resolve_dsn
from .._util import unwrap_single_errors
from ._options import Signal, WorkerOptions
from ._registry import FlowMismatch, ensure_flow
from ._worker import RawHandler, Served, Worker, WorkerStats, served


class WorkerGroup:
    """The workers `serve` runs; `stop()` drains them all."""

    def __init__(self, workers: Sequence[Worker]) -> None:
        self.workers = tuple(workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


async def serve(
    *targets: object,
    dsn: str | None = None,
    options: WorkerOptions | None = None,
    data_dir: Path | None = None,
    task_status: trio.TaskStatus[WorkerGroup] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve each target (flow/job class or instance, or `(FlowDef, {step: handler})`) until stopped or cancelled.

    `await nursery.start(serve, ProcessOrder)` returns a `WorkerGroup` once every worker is registered and reading.
    """
    opts = options or WorkerOptions()
    prepared = [served(t) for t in targets]
    if not prepared:
        raise ValueError("serve() needs at least one flow or job")
    async with unwrap_single_errors():
        resolved = await resolve_dsn(dsn, data_dir=data_dir)
        pool_size = min(100, len(prepared) * (opts.concurrency + 4))
        async with open_database(resolved, max_size=pool_size) as db, trio.open_nursery() as nursery:
            workers = [Worker(db, s, opts) for s in prepared]
            for worker in workers:
                await nursery.start(worker.run)
            task_status.started(WorkerGroup(workers))


__all__ = [
    "FlowMismatch",
    "RawHandler",
    "Served",
    "Signal",
    "Worker",
    "WorkerGroup",
    "WorkerOptions",
    "WorkerStats",
    "ensure_flow",
    "serve",
]
