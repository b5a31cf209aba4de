"""A worker's claim in notify mode is one statement: read the queue, then pgflow.start_tasks, which stamps each
task's started_at with the transaction's start. The read runs in a function and can see a message committed after
that start; such a message must be handed back, not fail the claim (check constraint started_at_is_after_queued_at)
or start its task before it was queued."""

from __future__ import annotations

import functools
import uuid

import trio

from pgflow_trio import open_engine
from pgflow_trio._store import open_database
from pgflow_trio._store._database import Connection
from pgflow_trio._store._pauses import read_and_claim_unless_paused
from pgflow_trio._store._worker_queries import read_and_claim

from . import flows
from .helpers import start_run
from .test_run_control import add_worker

SLUG = "counted"


async def _claim(tx: Connection, worker_id: uuid.UUID, *, pausable: bool) -> int:
    claim = read_and_claim_unless_paused if pausable else read_and_claim
    result = await tx.run(
        functools.partial(
            claim,
            queue=SLUG,
            worker_id=worker_id,
            qty=10,
            visibility=30,
            poll_seconds=None,
            poll_interval_ms=100,
            want_next_visible=False,
        )
    )
    return len(result.tasks)


async def _claim_queued_after_the_claim_began(dsn: str, *, pausable: bool) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine, open_database(dsn) as db:
            await engine.upsert_flow(flows.Counted)
            worker_id = await add_worker(db, SLUG)
            async with db.transaction() as tx:
                began = await tx.fetchval("SELECT now()")
                await trio.sleep(0.01)
                run_id = await start_run(db, SLUG, 1)  # committed after `began`: queued later than it
                queued = await db.fetchval("SELECT queued_at FROM pgflow.step_tasks WHERE run_id = $1", run_id)
                assert queued > began
                assert await _claim(tx, worker_id, pausable=pausable) == 0
            status, read_ct, visible = await db.fetchrow(
                f"SELECT t.status, q.read_ct, q.vt <= clock_timestamp() FROM pgflow.step_tasks t "
                f"JOIN pgmq.q_{SLUG} q ON q.msg_id = t.message_id WHERE t.run_id = $1",
                run_id,
            )
            assert (status, visible) == ("queued", True)  # handed back, visible at once
            assert read_ct == 1
            async with db.transaction() as tx:
                assert await _claim(tx, worker_id, pausable=pausable) == 1
            started = await db.fetchrow(
                "SELECT status, started_at >= queued_at AS ordered FROM pgflow.step_tasks WHERE run_id = $1", run_id
            )
            assert started is not None and tuple(started) == ("started", True)


async def test_a_worker_claim_hands_back_a_task_queued_after_it_began(dsn: str) -> None:
    await _claim_queued_after_the_claim_began(dsn, pausable=True)


async def test_the_drain_claim_hands_back_a_task_queued_after_it_began(dsn: str) -> None:
    await _claim_queued_after_the_claim_began(dsn, pausable=False)
