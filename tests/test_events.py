"""Lifecycle events against real PostgreSQL: each fires once, at the right moment, with the right metadata, in
order per task; subscribers that raise or go away; and the structured fields of the worker's log records."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from pgflow_trio import (
    Context,
    Engine,
    Flow,
    WorkerGroup,
    WorkerOptions,
    events,
    flow_from_spec,
    map_step,
    open_engine,
    step,
)
from pgflow_trio._observe._events import wanted
from pgflow_trio._runtime._cron import fire_due, sync_schedules
from pgflow_trio._store import open_database
from pgflow_trio._store._registry import ensure_flow

from . import flows
from .helpers import FAST, eventually, file_exists, wait_for_worker
from .test_worker import _worker_process

TASK_KINDS = (events.TaskStop, events.TaskException, events.TaskTimeout, events.TaskRelease, events.TaskCancel)


@pytest.fixture(autouse=True)
def _reset_observations() -> None:
    flows.reset()


class Recorder:
    """Every event of the process, in order, for one test."""

    def __init__(self) -> None:
        self.seen: list[events.Event] = []

    def __call__(self, event: events.Event) -> None:
        self.seen.append(event)

    def of(self, kind: type[Any], **match: Any) -> list[Any]:
        return [e for e in self.seen if type(e) is kind and all(getattr(e, k) == v for k, v in match.items())]

    def names(self, run_id: uuid.UUID) -> list[str]:
        """The names of the events of one run, in order."""
        return [e.name for e in self.seen if getattr(e, "run_id", None) == run_id]

    async def wait(self, kind: type[Any], count: int = 1, **match: Any) -> list[Any]:
        async def enough() -> bool:
            return len(self.of(kind, **match)) >= count

        await eventually(enough, 0.01)
        return self.of(kind, **match)


@asynccontextmanager
async def recording() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    with events.subscribe(recorder):
        yield recorder


@asynccontextmanager
async def serving(
    engine: Engine, *targets: Any, options: WorkerOptions = FAST
) -> AsyncIterator[tuple[WorkerGroup, trio.Nursery]]:
    async with trio.open_nursery() as nursery:
        group: WorkerGroup = await nursery.start(functools.partial(engine.serve, *targets, options=options))
        yield group, nursery
        nursery.cancel_scope.cancel()


class EmptyMap(Flow[list[int], list[int]], slug="ev_empty_map"):
    @map_step
    async def double(self, n: int) -> int:
        return n * 2


class Nap(Flow[int, int], slug="ev_nap", max_attempts=1, timeout=3):
    """Sleeps `n` seconds: past its 3 s timeout when n > 3."""

    @step
    async def doze(self, n: int) -> int:
        await trio.sleep(n)
        return n


def _task_meta(event: Any) -> dict[str, Any]:
    return {k: getattr(event, k) for k in ("worker_id", "flow_slug", "step_slug", "task_index", "attempt", "run_id")}


def _assert_task_order(recorder: Recorder) -> None:
    """Per task attempt (its message and attempt): one task.start, then exactly one outcome."""
    attempts: dict[tuple[Any, ...], list[str]] = {}
    for e in recorder.seen:
        if isinstance(e, events.TaskEvent):
            attempts.setdefault((e.run_id, e.step_slug, e.task_index, e.attempt, e.msg_id), []).append(e.name)
    for key, names in attempts.items():
        assert names[0] == "task.start" and len(names) == 2, (key, names)


# ---- the subscription API ----------------------------------------------------------------------------------


def test_wanted_follows_subscriptions_and_closing_stops_delivery() -> None:
    got: list[events.Event] = []
    assert not wanted(events.TaskStop)
    subscription = events.subscribe(got.append, events.TaskStop)
    assert wanted(events.TaskStop) and not wanted(events.TaskStart)
    from pgflow_trio._observe._events import emit

    meta = {"worker_id": uuid.uuid4(), "flow_slug": "f", "step_slug": "s", "task_index": 0, "attempt": 1}
    stop = events.TaskStop(at=0.0, **meta, run_id=uuid.uuid4(), msg_id=1, duration=0.1, queue_wait=0.0)
    emit(stop)
    subscription.close()
    subscription.close()  # idempotent
    emit(stop)
    assert got == [stop] and not wanted(events.TaskStop)


# ---- tasks and runs ------------------------------------------------------------------------------------------


async def test_a_run_emits_worker_poll_task_and_run_events_once_in_order(dsn: str) -> None:
    with trio.fail_after(30):
        async with recording() as rec, open_engine(dsn) as engine:
            async with serving(engine, flows.Echo) as (group, _):
                handle = await engine.start(flows.Echo, {"hello": 1})
                await handle.result(timeout=20)
                await rec.wait(events.RunComplete, run_id=handle.run_id)
                group.stop()
            (worker,) = group.workers
    run_id = handle.run_id
    assert rec.names(run_id) == ["run.started", "task.start", "task.stop", "run.completed"]
    (started,) = rec.of(events.RunStart)
    assert (started.run_id, started.flow_slug) == (run_id, "echo")
    (start,) = rec.of(events.TaskStart)
    (stop,) = rec.of(events.TaskStop)
    expected = {
        "worker_id": worker.worker_id,
        "flow_slug": "echo",
        "step_slug": "perform",
        "task_index": 0,
        "attempt": 1,
        "run_id": run_id,
    }
    assert _task_meta(start) == _task_meta(stop) == expected
    assert start.msg_id == stop.msg_id > 0
    assert 0 <= start.queue_wait == stop.queue_wait and stop.duration >= 0
    (completed,) = rec.of(events.RunComplete)
    assert completed.flow_slug == "echo" and completed.duration >= 0
    (wstart,) = rec.of(events.WorkerStart)
    (wstop,) = rec.of(events.WorkerStop)
    assert (wstart.worker_id, wstart.flow_slug, wstart.signal, wstart.concurrency) == (
        worker.worker_id,
        "echo",
        "notify",
        10,
    )
    assert wstop.worker_id == worker.worker_id and wstop.duration > 0
    assert rec.seen.index(wstart) < rec.seen.index(start) < rec.seen.index(stop) < rec.seen.index(wstop)
    polls = [e for e in rec.seen if isinstance(e, events.PollStart | events.PollStop)]
    assert [type(e) for e in polls[::2]] == [events.PollStart] * len(polls[::2])  # start, stop, start, stop...
    assert [type(e) for e in polls[1::2]] == [events.PollStop] * len(polls[1::2])
    assert len(polls) % 2 == 0 and sum(e.read for e in polls[1::2]) == 1
    assert all(0 <= e.read <= e.asked and e.duration >= 0 for e in polls[1::2])
    _assert_task_order(rec)


async def test_exceptions_a_retry_and_runs_that_fail(dsn: str) -> None:
    with trio.fail_after(40):
        async with recording() as rec, open_engine(dsn) as engine, serving(engine, flows.Flaky, flows.Broken):
            flaky = await engine.start(flows.Flaky, flows.Order(1, fail_times=1))
            broken = await engine.start(flows.Broken, flows.Order(7))
            bad_input = await engine.start("broken", {"nope": True})
            await rec.wait(events.RunComplete, run_id=flaky.run_id)
            await rec.wait(events.RunFail, run_id=broken.run_id)
            await rec.wait(events.RunFail, run_id=bad_input.run_id)
    assert rec.names(flaky.run_id) == [
        "run.started",
        "task.start",
        "task.exception",
        "task.start",
        "task.stop",
        "run.completed",
    ]
    (first,) = rec.of(events.TaskException, run_id=flaky.run_id)
    assert (first.attempt, first.error_type, first.error, first.retryable) == (
        1,
        "ValueError",
        "boom on attempt 1",
        True,
    )
    assert [e.attempt for e in rec.of(events.TaskStart, run_id=flaky.run_id)] == [1, 2]

    assert rec.names(broken.run_id)[-3:] == ["task.start", "task.exception", "run.failed"]
    (failed,) = rec.of(events.RunFail, run_id=broken.run_id)
    assert (failed.flow_slug, failed.step_slug) == ("broken", "charge")
    assert failed.error == "ValueError: card declined for order 7" and failed.duration >= 0

    (unfit,) = rec.of(events.TaskException, run_id=bad_input.run_id)
    assert (unfit.step_slug, unfit.error_type, unfit.retryable) == ("validate", "TaskInputError", False)
    (failed,) = rec.of(events.RunFail, run_id=bad_input.run_id)
    assert failed.step_slug == "validate" and failed.error is not None and failed.error.startswith("TaskInputError:")
    assert not rec.of(events.RunComplete, run_id=broken.run_id)
    _assert_task_order(rec)


async def test_a_timeout(dsn: str) -> None:
    with trio.fail_after(30):
        async with recording() as rec, open_engine(dsn) as engine, serving(engine, Nap):
            handle = await engine.start(Nap, 30)
            (failed,) = await rec.wait(events.RunFail, run_id=handle.run_id)
    assert rec.names(handle.run_id) == ["run.started", "task.start", "task.timeout", "run.failed"]
    (timeout,) = rec.of(events.TaskTimeout)
    assert (timeout.flow_slug, timeout.step_slug, timeout.timeout, timeout.attempt) == ("ev_nap", "doze", 3, 1)
    assert timeout.duration > 2.9
    assert failed.error == "TimeoutError: step 'doze' exceeded its timeout of 3s"


async def test_a_task_is_released_on_shutdown(dsn: str, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    with trio.fail_after(30):
        options = attrs.evolve(FAST, shutdown_grace=0.2)
        async with (
            recording() as rec,
            open_engine(dsn) as engine,
            serving(engine, flows.SlowOnce, options=options) as (
                group,
                _,
            ),
        ):
            handle = await engine.start(flows.SlowOnce, str(marker))
            await eventually(lambda: file_exists(marker))
            group.stop()
            await rec.wait(events.WorkerStop)
    assert rec.names(handle.run_id) == ["run.started", "task.start", "task.released"]
    (released,) = rec.of(events.TaskRelease)
    assert (released.flow_slug, released.attempt, released.run_id) == ("slow_once", 1, handle.run_id)
    assert released.duration > 0
    assert rec.seen.index(released) < rec.seen.index(rec.of(events.WorkerStop)[0])


async def test_cancelling_runs(dsn: str, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    with trio.fail_after(30):
        async with recording() as rec, open_engine(dsn) as engine:
            async with serving(engine, flows.SlowOnce):
                handle = await engine.start(flows.SlowOnce, str(marker))
                await eventually(lambda: file_exists(marker))
                await engine.cancel_run(handle.run_id, reason="not needed", by="ops")
                await rec.wait(events.TaskCancel, run_id=handle.run_id)
            await engine.upsert_flow(Nap)
            queued = [await engine.start(Nap, 0) for _ in range(2)]  # nobody serves ev_nap: they stay started
            outcome = await engine.cancel_runs(flow=Nap, reason="bulk")
    names = rec.names(handle.run_id)  # the worker hears of the cancel while the engine reads the run's start time
    assert names[:2] == ["run.started", "task.start"] and sorted(names[2:]) == ["run.cancelled", "task.cancelled"]
    (cancelled,) = rec.of(events.RunCancel, run_id=handle.run_id)
    assert (cancelled.flow_slug, cancelled.reason, cancelled.by) == ("slow_once", "not needed", "ops")
    assert cancelled.duration > 0
    assert sorted(outcome.run_ids) == sorted(h.run_id for h in queued)
    bulk = rec.of(events.RunCancel, flow_slug="ev_nap")
    assert sorted(e.run_id for e in bulk) == sorted(outcome.run_ids) and {e.reason for e in bulk} == {"bulk"}
    assert not rec.of(events.RunFail) and not rec.of(events.TaskException)


async def test_every_way_the_engine_starts_a_run(dsn: str) -> None:
    with trio.fail_after(30):
        async with recording() as rec, open_engine(dsn) as engine:
            await engine.upsert_flow(Nap)
            started = await engine.start(Nap, 0)
            again = await engine.start(Nap, 0, run_id=started.run_id)  # idempotent: not started again
            enqueued = await engine.enqueue(Nap, 0, delay=60)
            rerun = await engine.rerun(started.run_id)
            async with engine.transaction() as tx:
                in_tx = await tx.start(Nap, 0)
                assert not rec.of(events.RunStart, run_id=in_tx.run_id)  # not before it commits
            with pytest.raises(RuntimeError):
                async with engine.transaction() as tx:
                    rolled_back = await tx.start(Nap, 0)
                    raise RuntimeError("roll back")
    assert again.existed
    ids = [e.run_id for e in rec.of(events.RunStart)]
    assert ids == [started.run_id, enqueued.run_id, rerun.run_id, in_tx.run_id]
    assert rolled_back.run_id not in ids
    assert {e.flow_slug for e in rec.of(events.RunStart)} == {"ev_nap"}


async def test_a_rerun_with_tracing_on_and_a_run_that_completes_as_it_starts(dsn: str) -> None:
    """run.started whether tracing is on or not; a run pgflow completes inside start_flow (a root map over an
    empty array) gets its run.completed from the engine that started it, since no worker's report ends it."""
    with trio.fail_after(30):
        async with recording() as rec, open_engine(dsn, otel=True) as engine:
            await engine.upsert_flow(Nap)
            first = await engine.start(Nap, 0)
            rerun = await engine.rerun(first.run_id)
            await engine.upsert_flow(EmptyMap)
            empty = await engine.start(EmptyMap, [])
            async with engine.transaction() as tx:
                empty_in_tx = await tx.start(EmptyMap, [])
                assert not rec.of(events.RunComplete, run_id=empty_in_tx.run_id)  # not before it commits
    assert [e.run_id for e in rec.of(events.RunStart)] == [first.run_id, rerun.run_id, empty.run_id, empty_in_tx.run_id]
    assert [e.run_id for e in rec.of(events.RunComplete)] == [empty.run_id, empty_in_tx.run_id]


async def test_a_killed_workers_task_is_recovered_by_another(dsn: str, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    proc = _worker_process(dsn, "tests/flows.py:SlowOnce")
    try:
        with trio.fail_after(60):
            async with recording() as rec, open_engine(dsn) as engine:
                async with open_database(dsn, max_size=2) as db:
                    await wait_for_worker(db, "slow_once")
                handle = await engine.start(flows.SlowOnce, str(marker))
                await eventually(lambda: file_exists(marker))
                os.kill(proc.pid, signal.SIGKILL)
                await trio.to_thread.run_sync(proc.wait)
                async with serving(engine, flows.SlowOnce) as (group, _):
                    await rec.wait(events.RunComplete, run_id=handle.run_id)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    (recovered,) = rec.of(events.TaskRecover)
    assert (recovered.run_id, recovered.flow_slug, recovered.step_slug, recovered.task_index) == (
        handle.run_id,
        "slow_once",
        "work",
        0,
    )
    assert recovered.worker_id == group.workers[0].worker_id
    assert recovered.reason.endswith("stopped heartbeating")
    # the killed worker's task.start happened in another process: here, recovery then the second attempt
    assert rec.names(handle.run_id) == ["run.started", "task.recovered", "task.start", "task.stop", "run.completed"]
    assert rec.of(events.TaskStart)[0].attempt == 2


# ---- schedules -----------------------------------------------------------------------------------------------


async def test_a_built_in_schedule_fires(dsn: str) -> None:
    ticking = flow_from_spec({"slug": "ev_tick", "steps": [{"slug": "a"}], "cron": "* * * * * *"})

    async def handler(task_input: Any, ctx: Context) -> int:
        return 1

    with trio.fail_after(30):
        async with recording() as rec, open_engine(dsn) as engine, serving(engine, (ticking, {"a": handler})):
            (fired, *_) = await rec.wait(events.ScheduleFire)
            await rec.wait(events.RunComplete, run_id=fired.run_id)
    assert (fired.schedule, fired.flow_slug) == ("ev_tick", "ev_tick")
    assert fired.tick.tzinfo is not None and fired.tick.microsecond == 0 and fired.lateness >= 0
    names = [n for n in rec.names(fired.run_id) if n != "schedule.fired"]
    assert names == ["task.start", "task.stop", "run.completed"]  # no run.started: the engine did not start it
    assert len({e.tick for e in rec.of(events.ScheduleFire)}) == len(rec.of(events.ScheduleFire))


@pytest.mark.parametrize("served_all_along", [False, True])
@pytest.mark.parametrize("policy", ["skip", "once"])
async def test_missed_ticks(dsn: str, policy: str, served_all_along: bool) -> None:
    flow = flow_from_spec(
        {"slug": "ev_minutely", "steps": [{"slug": "a"}], "cron": {"schedule": "* * * * *", "catch_up": policy}}
    )
    with trio.fail_after(30):
        while not 5 <= datetime.datetime.now().second <= 45:  # noqa: ASYNC110 - a clock, nothing to wait on
            await trio.sleep(0.5)  # away from a minute's start: its own tick, within the grace, would fire too
        async with recording() as rec, open_database(dsn, max_size=2) as db:
            await ensure_flow(db, flow)
            registered = "now() - interval '4 hours'" if served_all_along else "now()"
            await db.execute(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name, started_at) "
                f"VALUES (gen_random_uuid(), 'ev_minutely', 'elsewhere', {registered})"
            )
            await sync_schedules(db, [flow], backend="builtin")
            await db.execute(
                "UPDATE pgflow_trio.schedules SET last_tick = date_trunc('minute', now()) - interval '3 hours'"
            )
            await fire_due(db, grace=1.0)
            await fire_due(db, grace=1.0)  # nothing more is missed
    missed = rec.of(events.ScheduleMiss)
    fired = rec.of(events.ScheduleFire)
    ticks = [e.tick for e in missed]
    assert ticks == sorted(set(ticks)) and all(e.schedule == e.flow_slug == "ev_minutely" for e in missed)
    assert all(t.second == 0 for t in ticks)
    if policy == "skip":
        assert not fired and len(missed) in (179, 180)  # 3 hours of minutes, the last perhaps within the grace
    else:
        (once,) = fired
        assert once.tick > ticks[-1] and once.tick - ticks[-1] == datetime.timedelta(minutes=1)
        assert once.lateness >= 0 and len(missed) in (178, 179)
    expected = "older than the scheduler's grace" if served_all_along else "no live worker served flow 'ev_minutely'"
    assert all(e.reason.startswith(expected) for e in missed), missed[0].reason


# ---- subscribers that fail, logs -----------------------------------------------------------------------------


async def test_a_subscriber_that_raises_breaks_nothing_and_is_logged_once(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def broken(event: events.Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("subscriber bug")

    with trio.fail_after(30), events.subscribe(broken, events.TaskStart, "task.stop", events.PollStop):
        async with recording() as rec, open_engine(dsn) as engine, serving(engine, flows.Echo):
            handles = [await engine.start(flows.Echo, {"n": n}) for n in range(3)]
            for handle in handles:
                await handle.result(timeout=20)
    assert calls >= 6 and len(rec.of(events.TaskStop)) == 3
    logged = [r for r in caplog.records if r.name == "pgflow_trio.events" and "subscriber bug" in str(r.exc_info)]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR


def _records(
    caplog: pytest.LogCaptureFixture, predicate: Callable[[logging.LogRecord], bool]
) -> list[logging.LogRecord]:
    return [r for r in caplog.records if predicate(r)]


@pytest.mark.parametrize("tracebacks", [False, True])
async def test_worker_log_records_carry_the_event_fields(
    dsn: str, caplog: pytest.LogCaptureFixture, tracebacks: bool
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgflow_trio")
    options = attrs.evolve(FAST, log_tracebacks=tracebacks)
    with trio.fail_after(30):
        async with (
            recording() as rec,
            open_engine(dsn) as engine,
            serving(engine, flows.Broken, options=options) as (
                group,
                _,
            ),
        ):
            handle = await engine.start(flows.Broken, flows.Order(3))
            await rec.wait(events.RunFail, run_id=handle.run_id)
    (worker,) = group.workers
    (exc,) = rec.of(events.TaskException)
    (failure,) = _records(caplog, lambda r: r.levelno == logging.ERROR and r.name == "pgflow_trio.worker")
    assert failure.getMessage() == (
        f"task broken/charge[0] of run {handle.run_id} failed (attempt 1): ValueError: card declined for order 3"
    )
    fields = {k: getattr(failure, k) for k in ("flow_slug", "step_slug", "task_index", "run_id", "attempt", "msg_id")}
    assert fields == {
        "flow_slug": "broken",
        "step_slug": "charge",
        "task_index": 0,
        "run_id": str(handle.run_id),
        "attempt": 1,
        "msg_id": exc.msg_id,
    }
    assert failure.worker_id == str(worker.worker_id) and failure.error_type == "ValueError"  # type: ignore[attr-defined]
    debug = _records(caplog, lambda r: r.levelno == logging.DEBUG and r.name == "pgflow_trio.worker")
    if tracebacks:
        assert failure.exc_info is not None and failure.exc_info[0] is ValueError
        assert not [r for r in debug if r.exc_info]
    else:
        assert failure.exc_info is None
        (trace,) = [r for r in debug if r.exc_info]
        assert trace.exc_info is not None and trace.exc_info[0] is ValueError
        assert trace.run_id == str(handle.run_id)  # type: ignore[attr-defined]
    serving_line = _records(caplog, lambda r: "serving broken" in r.getMessage())
    assert serving_line and serving_line[0].worker_id == str(worker.worker_id)  # type: ignore[attr-defined]
    assert serving_line[0].flow_slug == "broken"  # type: ignore[attr-defined]
