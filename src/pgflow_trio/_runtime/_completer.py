"""Batching of complete_task: tasks that finish while a flush is in flight are completed together, in one
statement, by the next flush. A lone task is completed at once, so latency does not suffer; under load the number
of round trips per task drops well below one."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import trio

from pgflow_trio._exceptions import ConnectionLost, DatabaseError, PgflowError
from pgflow_trio._observe._events import Event, RunComplete, RunFail, emit, wanted
from pgflow_trio._store import Database
from pgflow_trio._store._lifecycle import EndedRun
from pgflow_trio._store._worker_queries import ClaimedTask, complete_many

log = logging.getLogger("pgflow_trio.worker")

_MAX_BATCH = 100


_FLUSH_LIMIT = 10.0
"""Longest a batch of completions may take; beyond it the batch counts as not completed (recovery settles it)."""


@attrs.define
class _Pending:
    task: ClaimedTask
    payload: str
    outcome: Event | None = None  # the attempt's task.stop, emitted once the completion is committed
    done: trio.Event = attrs.Factory(trio.Event)
    error: PgflowError | None = None


def emit_ended(ended: Iterable[EndedRun]) -> None:
    """run.completed / run.failed for runs a report of this process ended (each is ended by exactly one
    transaction, so each is emitted once)."""
    for run in ended:
        if run.status == "completed":
            if wanted(RunComplete):
                emit(RunComplete(at=time.time(), run_id=run.run_id, flow_slug=run.flow_slug, duration=run.duration))
        elif wanted(RunFail):
            emit(
                RunFail(
                    at=time.time(),
                    run_id=run.run_id,
                    flow_slug=run.flow_slug,
                    duration=run.duration,
                    step_slug=run.step_slug,
                    error=run.error,
                )
            )


class Completer:
    """Run `run()` in a service nursery; `await complete(task, output_json)` returns once it is committed."""

    def __init__(self, db: Database, *, fields: Mapping[str, Any] | None = None) -> None:
        self._db = db
        self._fields = dict(fields or {})
        self._pending: list[_Pending] = []
        self._wakeup = trio.Event()

    async def complete(self, task: ClaimedTask, payload: str, outcome: Event | None = None) -> None:
        """Store the task's output (batched with others); `outcome` is emitted once it is committed, before the
        run events of the batch, even when the caller stopped waiting."""
        item = _Pending(task, payload, outcome)
        self._pending.append(item)
        self._wakeup.set()
        await item.done.wait()
        if item.error is not None:
            raise item.error

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._pending:
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        check = wanted(RunComplete) or wanted(RunFail)
        try:
            # A completion in flight finishes even when the worker stops (bounded): it may have committed already,
            # and its outcome and run events must then still be told.
            with trio.CancelScope(shield=True), trio.fail_after(_FLUSH_LIMIT):
                ended = await self._db.run(
                    functools.partial(
                        complete_many,
                        tasks=[p.task for p in batch],
                        payloads=[p.payload for p in batch],
                        check_ended=check,
                    )
                )
        except trio.TooSlowError:
            for item in batch:
                item.error = ConnectionLost(f"completing {len(batch)} tasks took over {_FLUSH_LIMIT:g}s")
        except ConnectionLost as exc:
            for item in batch:
                item.error = exc
        except DatabaseError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.warning(
                    "completing %d tasks together failed (%s); completing them one by one",
                    len(batch),
                    exc,
                    extra=self._fields,
                )
                for item in batch:
                    await self._flush([item])
                return
        else:
            for item in batch:
                if item.outcome is not None:
                    emit(item.outcome)
            emit_ended(ended)
        for item in batch:
            item.done.set()
