"""Run control against concurrent reports: a late pgflow.fail_task from before a retry, a deadlock between a cancel
and a failure report, and reports of an attempt from before a retry (fenced on the claimed message)."""

from __future__ import annotations

import functools
from typing import Any

import trio

from pgflow_trio import DatabaseError, Flow, needs_input, step
from pgflow_trio._store._worker_queries import ClaimedTask, fail, fail_permanently, release
from pgflow_trio._store._workers import recover_stalled_tasks
from pgflow_trio.testing import drain

from .helpers import eventually
from .test_run_control import _hold, add_worker, engine_for, in_queue, message_ids, start_by_hand, waiting_on_a_lock


class Roots(Flow[int, dict[str, Any]], slug="race_roots", max_attempts=1):
    @step
    async def a(self, n: int = needs_input()) -> int:
        return n + 1

    @step
    async def b(self, n: int = needs_input()) -> int:
        return n + 2


class Retrying(Flow[int, dict[str, Any]], slug="race_retrying", max_attempts=3):
    @step
    async def a(self, n: int = needs_input()) -> int:
        return n

    @step
    async def b(self, n: int = needs_input()) -> int:
        return n


def _claimed(row: dict[str, Any]) -> ClaimedTask:
    return ClaimedTask(row["run_id"], row["step_slug"], row["task_index"], row["msg_id"], None, 1, None)


async def test_a_late_fail_task_racing_a_retry_cannot_strand_the_task(dsn: str) -> None:
    """`a` runs out of attempts while `b` still runs; the run is retried while b's handler reports a failure.
    pgflow's fail_task saw the run failed before the retry committed and then archives b's message -- the new
    one. The recovery sweep gives b a new message, and the run completes."""
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            await engine.upsert_flow(Roots)
            db = engine.db
            worker = await add_worker(db, "race_roots")
            handle = await engine.start(Roots, 1)
            started = await start_by_hand(db, "race_roots", worker, await message_ids(db, handle.run_id))
            assert len(started) == 2
            await db.execute("SELECT pgflow.fail_task($1, 'a', 0, 'a broke')", handle.run_id)
            assert (await engine.get_run(handle.run_id)).status == "failed"
            [late] = await _hold(
                db,
                "SELECT pgflow_trio.retry_run($1)",
                (handle.run_id,),
                lambda: db.execute("SELECT pgflow.fail_task($1, 'b', 0, 'b broke late')", handle.run_id),
                "fail_task",
            )
            assert not isinstance(late, Exception), late
            b_msg = (await message_ids(db, handle.run_id))[1]
            assert await in_queue(db, "race_roots", [b_msg]) == 0  # stranded: queued, its message archived
            recovered = await db.run(functools.partial(recover_stalled_tasks, stale_after=30, timeout_grace=30))
            assert [(t.step_slug, t.reason.startswith("its queue message was archived")) for t in recovered] == [
                ("b", True)
            ]
            assert await in_queue(db, "race_roots", [(await message_ids(db, handle.run_id))[1]]) == 1
            await drain(engine, Roots)
            assert await handle.result() == {"a": 2, "b": 3}


async def test_a_cancel_deadlocked_with_a_failure_report_is_repeated_and_succeeds(dsn: str) -> None:
    """pgflow's fail_task locks task, step state, run; cancel_run locks run, step states, tasks. When the two
    deadlock and PostgreSQL aborts the cancel, the cancel runs again and succeeds."""
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            await engine.upsert_flow(Retrying)
            db = engine.db
            worker = await add_worker(db, "race_retrying")
            handle = await engine.start(Retrying, 1)
            assert len(await start_by_hand(db, "race_retrying", worker, await message_ids(db, handle.run_id))) == 2
            outcomes: dict[str, object] = {}

            async def report() -> None:
                try:
                    outcomes["fail_task"] = await db.execute(
                        "SELECT pgflow.fail_task($1, 'b', 0, 'handler error')", handle.run_id
                    )
                except DatabaseError as exc:
                    outcomes["fail_task"] = exc

            async def cancel() -> None:
                outcomes["cancel"] = await engine.cancel_run(handle.run_id, reason="deadlock")

            async with trio.open_nursery() as nursery, db.transaction() as holder:
                await holder.execute(
                    "SELECT 1 FROM pgflow.step_states WHERE run_id = $1 AND step_slug = 'b' FOR UPDATE",
                    handle.run_id,
                )
                nursery.start_soon(report)
                await eventually(lambda: waiting_on_a_lock(db, "fail_task"))
                nursery.start_soon(cancel)
                await eventually(lambda: waiting_on_a_lock(db, "cancel_run"))
            assert (await engine.get_run(handle.run_id)).state == "cancelled", outcomes
            deadlocked = outcomes["fail_task"]
            assert not isinstance(deadlocked, DatabaseError) or deadlocked.sqlstate == "40P01"


async def test_reports_of_an_attempt_from_before_a_retry_change_nothing(dsn: str) -> None:
    """The same worker claims the retried task again: failing or releasing the earlier attempt (its message) is
    refused, the new attempt stays started."""
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            await engine.upsert_flow(Retrying)
            db = engine.db
            worker = await add_worker(db, "race_retrying")
            handle = await engine.start(Retrying, 1)
            first = await start_by_hand(db, "race_retrying", worker, await message_ids(db, handle.run_id))
            await engine.cancel_run(handle.run_id)
            await engine.retry_run(handle.run_id)
            again = await start_by_hand(db, "race_retrying", worker, await message_ids(db, handle.run_id))
            assert len(again) == 2 and {r["msg_id"] for r in again}.isdisjoint(r["msg_id"] for r in first)
            old = _claimed(first[0])
            assert not await db.run(functools.partial(fail, worker_id=worker, task=old, payload="late"))
            assert not await db.run(functools.partial(fail_permanently, worker_id=worker, task=old, payload="late"))
            assert await db.run(functools.partial(release, worker_id=worker, tasks=[old])) == 0
            rows = await db.fetch(
                "SELECT status, attempts_count FROM pgflow.step_tasks WHERE run_id = $1", handle.run_id
            )
            assert [(r["status"], r["attempts_count"]) for r in rows] == [("started", 1), ("started", 1)]
            new = _claimed(again[0])
            assert await db.run(functools.partial(fail, worker_id=worker, task=new, payload="now"))
