"""A notify-mode worker wakes whenever a message it could read becomes visible, not only on inserts: retries,
tasks handed back, recovered tasks, failures reported by other processes, delayed starts.

The fallback poll and the visibility a read gives are 90 s, and a message another worker read stays invisible
300 s; each test must finish within DEADLINE (30 s), so only a wake-up can make it in time. The lower bounds check
that a wake-up does not start a task before its backoff or delay. Two tests are covered by the next-visible timer
(the reader sleeps until the next invisible message's time) rather than by a notification, and would pass without
the visibility trigger: `test_a_delayed_enqueue_starts_on_time` and
`test_a_step_start_delay_is_honoured_under_notify`; they guard the timer.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

import pgflow_trio
from pgflow_trio import Context, WorkerGroup, WorkerOptions, compile_flow, flow_from_spec, serve
from pgflow_trio._store import Database, open_database

from . import flows
from .helpers import FAST, eventually, start_run, wait_run

# A read message stays invisible for read_visibility: without a wake-up, a retry of a task that failed quickly would
# wait for that (the next-visible timer) or for the fallback poll, both far beyond DEADLINE.
FALLBACK = 90
WAKE = attrs.evolve(FAST, signal="notify", fallback_poll=float(FALLBACK), stale_after=60.0, read_visibility=FALLBACK)
DEADLINE = 30.0
OTHER_READ_VISIBILITY = 300


@asynccontextmanager
async def running(dsn: str, *targets: Any, options: WorkerOptions = WAKE) -> AsyncIterator[WorkerGroup]:
    async with trio.open_nursery() as nursery:
        group: WorkerGroup = await nursery.start(functools.partial(serve, *targets, dsn=dsn, options=options))
        yield group
        nursery.cancel_scope.cancel()


class Recorder:
    """A runtime flow's handler that records when each attempt started (and can fail the first ones)."""

    def __init__(self, fail_attempts: int = 0) -> None:
        self.fail_attempts = fail_attempts
        self.starts: list[float] = []

    async def __call__(self, task_input: Any, ctx: Context) -> str:
        self.starts.append(time.monotonic())
        if ctx.attempt <= self.fail_attempts:
            await trio.sleep(0.3)  # long enough for the reader to have gone back to sleep
            raise RuntimeError(f"fail attempt {ctx.attempt}")
        return f"attempt {ctx.attempt}"


def _flow(slug: str, **options: Any) -> Any:
    return flow_from_spec({"slug": slug, "max_attempts": 3, "base_delay": 1, "steps": [{"slug": "work", **options}]})


async def _claim_by_another_worker(db: Database, slug: str, run_id: uuid.UUID, *, heartbeat_age: float) -> uuid.UUID:
    """Start the run's task as another worker (a TypeScript one, say) would: read its message, start_tasks."""
    other = uuid.uuid4()
    await db.execute(
        "INSERT INTO pgflow.workers (worker_id, queue_name, function_name, last_heartbeat_at) "
        "VALUES ($1, $2, 'elsewhere', now() - make_interval(secs => $3))",
        other,
        slug,
        heartbeat_age,
    )
    ids = [r[0] for r in await db.fetch("SELECT msg_id FROM pgmq.read($1, $2, 10)", slug, OTHER_READ_VISIBILITY)]
    assert len(ids) == 1
    started = await db.fetch("SELECT * FROM pgflow.start_tasks($1, $2::bigint[], $3)", slug, ids, other)
    assert [r["run_id"] for r in started] == [run_id]
    return other


async def _create(db: Database, flow: Any) -> None:
    for statement in compile_flow(flow):
        await db.execute(statement)


async def test_retries_start_after_their_backoff_not_the_fallback_poll(dsn: str) -> None:
    flow = _flow("retried")
    handler = Recorder(fail_attempts=2)
    with trio.fail_after(DEADLINE):
        async with open_database(dsn, max_size=2) as db, running(dsn, (flow, {"work": handler})):
            run_id = await start_run(db, "retried", {})
            assert await wait_run(db, run_id) == ("completed", {"work": "attempt 3"})
    first, second = (b - a for a, b in zip(handler.starts, handler.starts[1:], strict=False))
    # pgflow's backoff: base_delay * 2^attempts = 2 s, then 4 s
    assert first > 1.5 and second > 3.5, handler.starts


async def test_a_task_handed_back_by_another_worker_is_picked_up_at_once(dsn: str) -> None:
    flow = _flow("handed_back")
    handler = Recorder()
    with trio.fail_after(DEADLINE):
        async with open_database(dsn, max_size=2) as db:
            await _create(db, flow)
            run_id = await start_run(db, "handed_back", {})
            other = await _claim_by_another_worker(db, "handed_back", run_id, heartbeat_age=0)
            async with running(dsn, (flow, {"work": handler})):
                await trio.sleep(0.5)  # the reader found nothing visible and sleeps
                released = await db.fetchval(
                    "SELECT pgflow_trio.release_tasks($1, ARRAY[$2::uuid], ARRAY['work'], ARRAY[0])", other, run_id
                )
                assert released == 1
                assert await wait_run(db, run_id) == ("completed", {"work": "attempt 1"})


async def test_a_failure_reported_by_another_process_wakes_the_worker_for_the_retry(dsn: str) -> None:
    flow = _flow("failed_elsewhere")
    handler = Recorder()
    with trio.fail_after(DEADLINE):
        async with open_database(dsn, max_size=2) as db:
            await _create(db, flow)
            run_id = await start_run(db, "failed_elsewhere", {})
            await _claim_by_another_worker(db, "failed_elsewhere", run_id, heartbeat_age=0)
            async with running(dsn, (flow, {"work": handler})):
                await trio.sleep(0.5)
                failed_at = time.monotonic()
                await db.execute("SELECT pgflow.fail_task($1, 'work', 0, 'crashed elsewhere')", run_id)
                assert await wait_run(db, run_id) == ("completed", {"work": "attempt 2"})
    assert handler.starts[0] - failed_at > 1.5  # the retry's backoff is 2 s


async def test_a_recovered_task_is_retried_after_its_backoff(dsn: str) -> None:
    flow = _flow("recovered")
    handler = Recorder()
    with trio.fail_after(DEADLINE):
        async with open_database(dsn, max_size=2) as db:
            await _create(db, flow)
            run_id = await start_run(db, "recovered", {})
            await _claim_by_another_worker(db, "recovered", run_id, heartbeat_age=3600)
            async with running(dsn, (flow, {"work": handler})) as group:
                assert await wait_run(db, run_id) == ("completed", {"work": "attempt 2"})
                assert group.workers[0].stats.recovered == 1


async def test_a_delayed_enqueue_starts_on_time(dsn: str) -> None:
    with trio.fail_after(DEADLINE):
        async with pgflow_trio.open_engine(dsn) as engine, running(dsn, flows.Echo):
            await trio.sleep(0.5)
            enqueued_at = time.monotonic()
            handle = await engine.enqueue(flows.Echo, {"n": 1}, delay=2)
            await handle.result(timeout=DEADLINE)
            done_at = time.monotonic()
    assert done_at - enqueued_at > 1.5


async def test_a_step_start_delay_is_honoured_under_notify(dsn: str) -> None:
    flow = flow_from_spec(
        {"slug": "delayed_dep", "steps": [{"slug": "first"}, {"slug": "work", "deps": ["first"], "start_delay": 2}]}
    )
    handler = Recorder()
    first_done: list[float] = []

    async def first(task_input: Any, ctx: Context) -> int:
        first_done.append(time.monotonic())
        return 1

    with trio.fail_after(DEADLINE):
        async with open_database(dsn, max_size=2) as db, running(dsn, (flow, {"first": first, "work": handler})):
            run_id = await start_run(db, "delayed_dep", {})
            assert (await wait_run(db, run_id))[0] == "completed"
    assert handler.starts[0] - first_done[0] > 1.5


async def test_the_visibility_trigger_is_installed_once_per_queue(dsn: str) -> None:
    flow = _flow("triggered")
    with trio.fail_after(DEADLINE):
        async with (
            open_database(dsn, max_size=2) as db,
            running(dsn, (flow, {"work": Recorder()})),
            running(dsn, (flow, {"work": Recorder()})),
        ):
            await eventually(
                lambda: db.fetchval(
                    "SELECT count(*) = 2 FROM pgflow.workers WHERE queue_name = 'triggered' AND deprecated_at IS NULL"
                )
            )
            triggers = await db.fetch(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'pgmq.q_triggered'::regclass "
                "AND tgname LIKE 'pgflow_trio_%' ORDER BY tgname"
            )
            assert [t["tgname"] for t in triggers] == ["pgflow_trio_notify_insert", "pgflow_trio_notify_visible"]
            assert not await db.fetchval("SELECT pgflow_trio.enable_notify_visible('triggered')")


async def test_a_mixed_case_slug_wakes_a_notify_worker_on_insert_and_on_retry(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """pgmq names the queue table of "MixedCase" q_mixedcase, and so the channels its trigger and ours notify."""
    flows.reset()
    with trio.fail_after(DEADLINE):
        async with open_database(dsn, max_size=2) as db, running(dsn, flows.MixedCase):
            await trio.sleep(0.5)  # the reader found nothing and waits for a notification
            inserted = await start_run(db, "MixedCase", 3)
            assert await wait_run(db, inserted) == ("completed", {"work": 3})
            retried = await start_run(db, "MixedCase", -4)
            assert await wait_run(db, retried) == ("completed", {"work": 4})
    assert flows.seen_attempts == [1, 1, 2]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == []
