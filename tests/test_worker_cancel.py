"""Workers cancel the running handlers of a run that ended under them (cancelled, or failed by another step):
at once on a cancellation notification, within `run_check_interval` by polling otherwise. Such a handler is not a
failure of its task: nothing is reported against its attempts."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import attrs
import pytest
import trio

from pgflow_trio import Flow, RunCancelled, WorkerGroup, WorkerOptions, open_engine, serve, step
from pgflow_trio._store import Database, open_database

from .helpers import FAST, eventually, start_run, wait_run

started: dict[str, trio.Event] = {}
cancelled: dict[str, trio.Event] = {}


def _events(key: str) -> tuple[trio.Event, trio.Event]:
    started[key] = trio.Event()
    cancelled[key] = trio.Event()
    return started[key], cancelled[key]


async def _wait_forever(key: str) -> int:
    started[key].set()
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        cancelled[key].set()
        raise


class Sleeper(Flow[str, int], slug="cancel_sleeper", max_attempts=3, timeout=60):
    @step
    async def sleep(self, input: str) -> int:
        if input == "quick":
            return 1
        return await _wait_forever(input)


class Once(Flow[str, int], slug="cancel_once", max_attempts=1, timeout=60):
    """Waits to be cancelled the first time it runs for an input, returns 7 the next time."""

    seen: ClassVar[set[str]] = set()

    @step
    async def work(self, input: str) -> int:
        if input not in Once.seen:
            Once.seen.add(input)
            return await _wait_forever(input)
        return 7


class Reclaimed(Flow[str, int], slug="cancel_reclaimed", max_attempts=3, timeout=60):
    """The first attempt for an input does not stop at once when cancelled (blocking work in a thread, or a
    cleanup that takes a moment); later attempts return 2 after a short while."""

    seen: ClassVar[set[str]] = set()

    @step
    async def work(self, input: str) -> int:
        if input in Reclaimed.seen:
            await trio.sleep(0.3)
            return 2
        Reclaimed.seen.add(input)
        started[input].set()
        if input == "thread":
            await trio.to_thread.run_sync(time.sleep, 1.0)  # a thread cannot be cancelled: it returns 1
            return 1
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(1.0)
            raise


class Sibling(Flow[str, dict[str, Any]], slug="cancel_sibling", max_attempts=1, timeout=60):
    """`slow` runs while `boom` fails for good: pgflow fails the run, and `slow`'s work can no longer count."""

    @step
    async def slow(self, input: str) -> int:
        return await _wait_forever(input)

    @step
    async def boom(self, input: str) -> int:
        await started[input].wait()
        raise RuntimeError("boom")


@asynccontextmanager
async def serving(dsn: str, target: type, options: WorkerOptions) -> AsyncIterator[tuple[Database, WorkerGroup]]:
    async with open_database(dsn, max_size=4) as db, trio.open_nursery() as nursery:
        group: WorkerGroup = await nursery.start(functools.partial(serve, target, dsn=dsn, options=options))
        yield db, group
        nursery.cancel_scope.cancel()


async def _end_run(db: Database, run_id: uuid.UUID, slug: str, *, notify: bool) -> None:
    """What a cancellation commits, as far as workers can see: the run failed, its tasks failed, and (with events
    on) a `cancel:<run_id>` notification on the queue's wake channel."""
    async with db.transaction() as tx:
        await tx.execute("UPDATE pgflow.runs SET status = 'failed', failed_at = now() WHERE run_id = $1", run_id)
        await tx.execute(
            "UPDATE pgflow.step_tasks SET status = 'failed', failed_at = now(), error_message = 'cancelled' "
            "WHERE run_id = $1 AND status IN ('queued', 'started')",
            run_id,
        )
        if notify:
            await tx.execute("SELECT pg_notify($1, $2)", f"pgflow_trio.q_{slug}", f"cancel:{run_id}")


async def test_a_cancellation_notification_cancels_the_running_handler_at_once(dsn: str) -> None:
    handler_started, handler_cancelled = _events("notified")
    options = attrs.evolve(FAST, run_check_interval=300.0)  # only the notification can do it
    with trio.fail_after(30):
        async with serving(dsn, Sleeper, options) as (db, group):
            run_id = await start_run(db, "cancel_sleeper", "notified")
            await handler_started.wait()
            await _end_run(db, run_id, "cancel_sleeper", notify=True)
            await handler_cancelled.wait()
            worker = group.workers[0]
            await eventually(lambda: _true(worker.running == 0))
            assert (worker.stats.cancelled, worker.stats.failed, worker.stats.completed) == (1, 0, 0)
            task = await db.fetchrow("SELECT status, attempts_count FROM pgflow.step_tasks WHERE run_id = $1", run_id)
            assert task is not None and (task["status"], task["attempts_count"]) == ("failed", 1)
            # the worker goes on serving
            assert await wait_run(db, await start_run(db, "cancel_sleeper", "quick")) == ("completed", {"sleep": 1})


async def test_cancel_run_cancels_the_handler_and_a_retry_gets_a_fresh_attempt(dsn: str) -> None:
    """Through the public API, with max_attempts=1: the cancelled handler is not a failed attempt, nothing of
    the run completes later, and retrying it runs the task again and completes the run."""
    handler_started, handler_cancelled = _events("engine")
    with trio.fail_after(30):
        async with serving(dsn, Once, FAST) as (db, group), open_engine(dsn) as engine:
            handle = await engine.start(Once, "engine")
            await handler_started.wait()
            await engine.cancel_run(handle.run_id, reason="wrong input", by="ops")
            await handler_cancelled.wait()
            worker = group.workers[0]
            await eventually(lambda: _true(worker.running == 0))
            await trio.sleep(0.5)  # anything late would land now
            run = await engine.get_run(handle.run_id)
            assert (run.state, run.output) == ("cancelled", None)
            assert (worker.stats.cancelled, worker.stats.failed, worker.stats.completed) == (1, 0, 0)
            with pytest.raises(RunCancelled) as cancelled_run:
                await handle.result()
            assert cancelled_run.value.reason == "wrong input"
            await engine.retry_run(handle.run_id)
            assert await handle.result() == 7
            task = await db.fetchrow("SELECT attempts_count FROM pgflow.step_tasks WHERE run_id = $1", handle.run_id)
            assert task is not None and task["attempts_count"] == 1


async def test_without_notifications_the_run_check_cancels_the_handler(dsn: str) -> None:
    handler_started, handler_cancelled = _events("polled")
    options = attrs.evolve(FAST, signal="poll", run_check_interval=0.2)
    with trio.fail_after(30):
        async with serving(dsn, Sleeper, options) as (db, group):
            run_id = await start_run(db, "cancel_sleeper", "polled")
            await handler_started.wait()
            await _end_run(db, run_id, "cancel_sleeper", notify=False)
            await handler_cancelled.wait()
            await eventually(lambda: _true(group.workers[0].running == 0))
            assert group.workers[0].stats.cancelled == 1
            assert group.workers[0].stats.failed == 0


async def test_a_handler_whose_run_failed_in_another_step_is_cancelled_and_its_task_closed(dsn: str) -> None:
    handler_started, handler_cancelled = _events("sibling")
    with trio.fail_after(30):
        async with serving(dsn, Sibling, attrs.evolve(FAST, run_check_interval=0.2)) as (db, group):
            run_id = await start_run(db, "cancel_sibling", "sibling")
            await handler_started.wait()
            assert (await wait_run(db, run_id))[0] == "failed"
            await handler_cancelled.wait()
            row = await _eventually_row(
                db,
                "SELECT status, attempts_count, error_message FROM pgflow.step_tasks "
                "WHERE run_id = $1 AND step_slug = 'slow' AND status = 'failed'",
                run_id,
            )
            assert row["attempts_count"] == 1
            assert row["error_message"].startswith("cancelled:")
            assert group.workers[0].stats.cancelled == 1


async def _eventually_row(db: Database, sql: str, *args: object) -> dict[str, object]:
    await eventually(lambda: db.fetchrow(sql, *args))
    row = await db.fetchrow(sql, *args)
    assert row is not None
    return dict(row)


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("kind", ["thread", "cleanup"])
async def test_a_retried_task_claimed_again_while_its_cancelled_attempt_unwinds(dsn: str, kind: str) -> None:
    """Cancel, then retry at once: the same worker claims the retried task (a new message) while the earlier
    attempt is still unwinding. The earlier attempt reports nothing that could touch the new one (not even the
    output a thread returned after the cancellation), and the new attempt completes the run."""
    _events(kind)
    with trio.fail_after(30):
        async with serving(dsn, Reclaimed, FAST) as (db, group), open_engine(dsn) as engine:
            handle = await engine.start(Reclaimed, kind)
            await started[kind].wait()
            await engine.cancel_run(handle.run_id)
            await engine.retry_run(handle.run_id)
            assert await handle.result() == 2
            worker = group.workers[0]
            await eventually(lambda: _true(worker.running == 0))
            assert (worker.stats.cancelled, worker.stats.completed) == (1, 1)
            task = await db.fetchrow(
                "SELECT status, attempts_count FROM pgflow.step_tasks WHERE run_id = $1", handle.run_id
            )
            assert task is not None and (task["status"], task["attempts_count"]) == ("completed", 1)


class Stubborn(Flow[str, str], slug="cancel_stubborn", max_attempts=2, timeout=3):
    """Its first attempt blocks a thread for a second (a cancellation cannot stop it); later ones return."""

    spans: ClassVar[list[tuple[float, float]]] = []
    first_started: ClassVar[trio.Event | None] = None

    @step
    async def work(self, input: str) -> str:
        begin = time.monotonic()
        try:
            if len(Stubborn.spans) == 0:
                Stubborn.spans.append((begin, float("inf")))
                assert Stubborn.first_started is not None
                Stubborn.first_started.set()
                await trio.to_thread.run_sync(time.sleep, 1.0)
                return "first"
            Stubborn.spans.append((begin, float("inf")))
            return "again"
        finally:
            index = next(i for i, (b, _) in enumerate(Stubborn.spans) if b == begin)
            Stubborn.spans[index] = (begin, time.monotonic())


async def test_a_retry_never_runs_a_task_beside_its_attempt_still_running(dsn: str) -> None:
    """Cancelled and retried at once while its handler cannot stop: the new attempt waits for the old one's
    timeout instead of running beside it."""
    Stubborn.spans.clear()
    Stubborn.first_started = trio.Event()
    options = attrs.evolve(FAST, signal="notify")
    with trio.fail_after(30):
        async with open_engine(dsn) as engine, trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve, Stubborn, dsn=dsn, options=options))
            handle = await engine.start(Stubborn, "x")
            await Stubborn.first_started.wait()
            await engine.cancel_run(handle.run_id)
            await engine.retry_run(handle.run_id)
            assert await handle.result() == "again"
            nursery.cancel_scope.cancel()
    (_, first_end), (second_begin, _) = Stubborn.spans
    assert second_begin >= first_end, f"two attempts ran side by side: {Stubborn.spans}"
