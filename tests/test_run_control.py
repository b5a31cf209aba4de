"""Operating runs against real PostgreSQL: cancel, retry in place, rerun; the engine API, the SQL functions under
concurrency, and the CLI."""

from __future__ import annotations

import datetime
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from pgflow_trio import (
    ConfigurationError,
    Engine,
    Flow,
    FlowChanged,
    RunCancelled,
    RunFailed,
    RunNotActive,
    RunNotFound,
    RunNotRetryable,
    map_step,
    needs_input,
    open_engine,
    step,
)
from pgflow_trio._store import Database, Notification, open_listener
from pgflow_trio._store._worker_queries import wake_channel
from pgflow_trio.testing import drain

from .helpers import cli, eventually

UTC = datetime.UTC
calls: Counter[tuple[str, int]] = Counter()
broken: set[int] = set()


class Squares(Flow[list[int], int], slug="ctl_squares", max_attempts=1):
    """A root map whose elements in `broken` fail, then a step that sums the squares."""

    @map_step
    async def square(self, n: int) -> int:
        calls[("square", n)] += 1
        if n in broken:
            raise ValueError(f"no square for {n}")
        return n * n

    @step
    async def total(self, square: list[int]) -> int:
        calls[("total", 0)] += 1
        return sum(square)


class Pair(Flow[int, int], slug="ctl_pair", max_attempts=1):
    @step
    async def first(self, n: int = needs_input()) -> int:
        calls[("first", n)] += 1
        if n in broken:
            raise ValueError(f"first refuses {n}")
        return n + 1

    @step
    async def second(self, first: int) -> int:
        calls[("second", first)] += 1
        return first * 2


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    broken.clear()


@asynccontextmanager
async def engine_for(dsn: str, **options: Any) -> AsyncIterator[Engine]:
    async with open_engine(dsn, **options) as engine:
        await engine.upsert_flow(Squares)
        await engine.upsert_flow(Pair)
        yield engine


async def add_worker(db: Database, queue: str) -> uuid.UUID:
    """A row in pgflow.workers for a worker driven by hand through pgflow's functions."""
    worker_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO pgflow.workers (queue_name, worker_id, function_name) VALUES ($1, $2, 'by hand')", queue, worker_id
    )
    return worker_id


async def message_ids(db: Database, run_id: uuid.UUID) -> list[int]:
    rows = await db.fetch(
        "SELECT message_id FROM pgflow.step_tasks WHERE run_id = $1 ORDER BY step_slug, task_index", run_id
    )
    return [r["message_id"] for r in rows]


async def start_by_hand(db: Database, slug: str, worker_id: uuid.UUID, msg_ids: list[int]) -> list[dict[str, Any]]:
    """pgflow.start_tasks as a TypeScript worker calls it: the tasks it started."""
    rows = await db.fetch(
        "SELECT run_id, step_slug, task_index, msg_id FROM pgflow.start_tasks($1, $2::bigint[], $3)",
        slug,
        msg_ids,
        worker_id,
    )
    return [dict(r) for r in rows]


async def tasks_of(db: Database, run_id: uuid.UUID) -> dict[tuple[str, int], tuple[str, Any, str | None]]:
    rows = await db.fetch(
        "SELECT step_slug, task_index, status, output::text AS output, error_message FROM pgflow.step_tasks "
        "WHERE run_id = $1",
        run_id,
    )
    return {
        (r["step_slug"], r["task_index"]): (
            r["status"],
            None if r["output"] is None else json.loads(r["output"]),
            r["error_message"],
        )
        for r in rows
    }


async def in_queue(db: Database, slug: str, msg_ids: list[int]) -> int:
    count: int = await db.fetchval(f"SELECT count(*) FROM pgmq.q_{slug} WHERE msg_id = ANY($1::bigint[])", msg_ids)
    return count


async def waiting_on_a_lock(db: Database, query_part: str) -> bool:
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%')",
            query_part,
        )
    )


# ---- cancel -------------------------------------------------------------------------------------------------


async def test_cancelling_a_run_with_queued_tasks(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_for(dsn, recheck_interval=600) as engine:
            handle = await engine.start(Squares, [1, 2, 3])
            old_ids = await message_ids(engine.db, handle.run_id)
            assert len(old_ids) == 3 and await in_queue(engine.db, "ctl_squares", old_ids) == 3
            outcome: list[BaseException] = []

            async def wait_for_result() -> None:
                try:
                    await handle.result()
                except RunCancelled as exc:
                    outcome.append(exc)

            async with (
                open_listener(engine.db, [wake_channel("ctl_squares")]) as wakes,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(wait_for_result)
                await trio.sleep(0.2)  # the waiter has read the run and waits on events (recheck: 600 s)
                cancellation = await engine.cancel_run(handle.run_id, reason="customer asked", by="ops@example")
                wake = await wakes.receive()
            assert isinstance(wake, Notification) and wake.payload == f"cancel:{handle.run_id}"
            # the waiter woke on the run:failed event: RunCancelled, a RunFailed, with who/why/when
            [error] = outcome
            assert isinstance(error, RunCancelled) and isinstance(error, RunFailed)
            assert (error.reason, error.cancelled_by, error.cancelled_at) == (
                "customer asked",
                "ops@example",
                cancellation.at,
            )
            assert "was cancelled" in str(error) and "by ops@example: customer asked" in str(error)
            # the messages are archived and no task can start
            assert await in_queue(engine.db, "ctl_squares", old_ids) == 0
            archived = await engine.db.fetchval(
                "SELECT count(*) FROM pgmq.a_ctl_squares WHERE msg_id = ANY($1::bigint[])", old_ids
            )
            assert archived == 3
            worker = await add_worker(engine.db, "ctl_squares")
            assert await start_by_hand(engine.db, "ctl_squares", worker, old_ids) == []
            assert await drain(engine, Squares) == []
            tasks = await tasks_of(engine.db, handle.run_id)
            assert {t[0] for t in tasks.values()} == {"failed"}
            assert {t[2] for t in tasks.values()} == {"Cancelled by ops@example: customer asked"}
            run = await engine.get_run_with_states(handle.run_id)
            assert run.status == "failed" and run.state == "cancelled" and run.cancellation == cancellation
            assert run.failed_at == cancellation.at
            assert [(s.step_slug, s.status) for s in run.steps] == [("square", "failed"), ("total", "created")]
            with pytest.raises(RunCancelled):
                await engine.handle(handle.run_id).result(timeout=5)
            # listing tells cancelled from failed
            cancelled = await engine.list_runs(status="cancelled")
            assert [r.run_id for r in cancelled.runs] == [handle.run_id]
            assert (await engine.list_runs(status="failed")).runs == ()
            assert (await engine.list_runs()).runs[0].state == "cancelled"
            assert {"cancelled": 1} in [f.runs for f in await engine.list_flows()]
    shown = cli("runs", "show", str(handle.run_id), "--dsn", dsn)
    assert shown.returncode == 0, shown.stderr
    assert "status cancelled" in shown.stdout
    assert "by ops@example: customer asked" in shown.stdout
    listed = cli("runs", "list", "--status", "cancelled", "--dsn", dsn)
    assert listed.returncode == 0 and str(handle.run_id) in listed.stdout and "cancelled" in listed.stdout


async def test_cancelling_a_run_that_is_not_started_is_refused_clearly(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            done = await engine.start(Pair, 1)
            await drain(engine, Pair)
            assert await done.result(timeout=5) == 4
            with pytest.raises(RunNotActive, match=r"cannot cancel run .* of ctl_pair: it is already completed") as e:
                await engine.cancel_run(done.run_id)
            assert e.value.state == "completed" and e.value.run_id == done.run_id
            assert e.value.sqlstate == getattr(e.value.__cause__, "sqlstate", None) == "PF002"
            assert "rerun" in str(e.value)
            broken.add(2)
            failed = await engine.start(Pair, 2)
            await drain(engine, Pair)
            with pytest.raises(RunNotActive, match=r"it is already failed.*retry"):
                await engine.cancel_run(failed.run_id)
            cancelled = await engine.start(Pair, 3)
            await engine.cancel_run(cancelled.run_id)
            with pytest.raises(RunNotActive, match=r"it is already cancelled") as e:
                await engine.cancel_run(cancelled.run_id)
            assert e.value.state == "cancelled"
            with pytest.raises(RunNotFound):
                await engine.cancel_run(uuid.uuid4())
            with pytest.raises(ConfigurationError, match="reason must be a string"):
                await engine.cancel_run(cancelled.run_id, reason=3)  # type: ignore[arg-type]
    result = cli("runs", "cancel", str(done.run_id), "--dsn", dsn)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot cancel run")


async def _hold(
    db: Database, first: str, args: tuple[object, ...], then: Callable[[], Awaitable[object]], blocked_on: str
) -> list[object]:
    """Run `first` in a transaction, then `then` (in its own transaction) while that transaction is open; commit
    once `then` waits on the lock the first holds. Returns what `then` returned or raised."""
    result: list[object] = []

    async def second() -> None:
        try:
            result.append(await then())
        except Exception as exc:
            result.append(exc)

    async with trio.open_nursery() as nursery, db.transaction() as tx:
        await tx.execute(first, *args)
        nursery.start_soon(second)
        await eventually(lambda: waiting_on_a_lock(db, blocked_on))
    return result


async def test_a_completion_racing_a_cancel_changes_nothing_after_it(dsn: str) -> None:
    complete = "SELECT pgflow.complete_task($1, 'first', 0, '5'::jsonb)"
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            db = engine.db
            worker = await add_worker(db, "ctl_pair")
            # cancel first; a completion arrives while the cancel is uncommitted
            a = await engine.start(Pair, 1)
            assert len(await start_by_hand(db, "ctl_pair", worker, await message_ids(db, a.run_id))) == 1
            [outcome] = await _hold(
                db,
                "SELECT pgflow_trio.cancel_run($1, 'race', NULL)",
                (a.run_id,),
                lambda: db.execute(complete, a.run_id),
                "complete_task",
            )
            assert not isinstance(outcome, Exception)
            assert await tasks_of(db, a.run_id) == {("first", 0): ("failed", None, "Cancelled: race")}
            run = await engine.get_run_with_states(a.run_id)
            assert (run.state, run.remaining_steps, run.output) == ("cancelled", 2, None)
            assert [s.status for s in run.steps] == ["failed", "created"]
            # a late completion, after the cancel committed, changes nothing either
            await db.execute(complete, a.run_id)
            assert await tasks_of(db, a.run_id) == {("first", 0): ("failed", None, "Cancelled: race")}
            await db.execute("SELECT pgflow.fail_task($1, 'first', 0, 'late')", a.run_id)
            assert await tasks_of(db, a.run_id) == {("first", 0): ("failed", None, "Cancelled: race")}

            # complete first; the cancel arrives while the completion is uncommitted and waits for it
            b = await engine.start(Pair, 1)
            assert len(await start_by_hand(db, "ctl_pair", worker, await message_ids(db, b.run_id))) == 1
            [cancelled] = await _hold(
                db, complete, (b.run_id,), lambda: engine.cancel_run(b.run_id, reason="race"), "cancel_run"
            )
            assert not isinstance(cancelled, Exception), cancelled
            tasks = await tasks_of(db, b.run_id)
            assert tasks == {
                ("first", 0): ("completed", 5, None),
                ("second", 0): ("failed", None, "Cancelled: race"),
            }
            second_msg = (await message_ids(db, b.run_id))[1]
            assert await in_queue(db, "ctl_pair", [second_msg]) == 0
            assert await start_by_hand(db, "ctl_pair", worker, [second_msg]) == []
            run = await engine.get_run(b.run_id)
            assert (run.state, run.remaining_steps, run.output) == ("cancelled", 1, None)


# ---- retry in place -----------------------------------------------------------------------------------------


async def test_retrying_a_failed_map_keeps_completed_elements(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            broken.add(3)
            handle = await engine.start(Squares, [1, 2, 3, 4])
            first_pass = await drain(engine, Squares)
            assert [(t.step, t.task_index, t.outcome) for t in first_pass] == [
                ("square", 0, "completed"),
                ("square", 1, "completed"),
                ("square", 2, "failed"),
            ]
            with pytest.raises(RunFailed, match="no square for 3") as failed:
                await handle.result(timeout=5)
            assert not isinstance(failed.value, RunCancelled)
            broken.clear()
            assert await engine.retry_run(handle.run_id) == 2  # elements 3 and 4 (the sum starts after them)
            run = await engine.get_run_with_states(handle.run_id)
            assert (run.state, run.failed_at) == ("started", None)
            [square, total] = run.steps
            assert (square.status, square.remaining_tasks, square.initial_tasks) == ("started", 2, 4)
            assert (total.status, total.remaining_deps) == ("created", 1)
            second_pass = await drain(engine, Squares)
            assert [(t.step, t.task_index, t.attempt) for t in second_pass] == [
                ("square", 2, 1),
                ("square", 3, 1),
                ("total", 0, 1),
            ]
            assert await handle.result(timeout=5) == 1 + 4 + 9 + 16
            assert calls == {("square", 1): 1, ("square", 2): 1, ("square", 3): 2, ("square", 4): 1, ("total", 0): 1}
            history = await engine.db.fetch(
                "SELECT tasks_requeued, was_cancelled FROM pgflow_trio.run_retries WHERE run_id = $1", handle.run_id
            )
            assert [tuple(r) for r in history] == [(2, False)]


async def test_retrying_a_cancelled_run(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            handle = await engine.start(Pair, 10)
            await engine.cancel_run(handle.run_id, reason="oops")
            assert await engine.retry_run(handle.run_id) == 1
            run = await engine.get_run(handle.run_id)
            assert (run.state, run.cancellation) == ("started", None)
            assert [(t.step, t.outcome) for t in await drain(engine, Pair)] == [
                ("first", "completed"),
                ("second", "completed"),
            ]
            assert await handle.result(timeout=5) == 22
            reason = await engine.db.fetchval(
                "SELECT cancel_reason FROM pgflow_trio.run_retries WHERE run_id = $1 AND was_cancelled", handle.run_id
            )
            assert reason == "oops"


async def test_retry_is_refused_after_the_flow_changed(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            broken.add(1)
            handle = await engine.start(Pair, 1)
            await drain(engine, Pair)
            await engine.db.execute("SELECT pgflow.add_step('ctl_pair', 'audit', ARRAY['second'])")
            with pytest.raises(FlowChanged, match=r"step audit was added to the flow after the run started") as e:
                await engine.retry_run(handle.run_id)
            assert "rerun" in str(e.value) and e.value.run_id == handle.run_id
            assert e.value.sqlstate == getattr(e.value.__cause__, "sqlstate", None) == "PF003"
            run = await engine.get_run(handle.run_id)
            assert run.state == "failed"  # nothing changed
            outcome = await engine.retry_runs(flow=Pair)
            assert outcome.run_ids == () and [r for r, _ in outcome.skipped] == [handle.run_id]


async def test_retry_of_a_run_that_is_not_failed_is_refused_clearly(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            running = await engine.start(Pair, 1)
            with pytest.raises(RunNotRetryable, match=r"cannot retry run .*: it is still running.*cancel") as e:
                await engine.retry_run(running.run_id)
            assert e.value.state == "started"
            await drain(engine, Pair)
            with pytest.raises(RunNotRetryable, match=r"it is already completed.*rerun"):
                await engine.retry_run(running.run_id)
            with pytest.raises(RunNotFound):
                await engine.retry_run(uuid.uuid4())
            with pytest.raises(ConfigurationError, match="status must be 'failed' or 'cancelled'"):
                await engine.retry_runs(flow=Pair, status="started")  # type: ignore[arg-type]
    result = cli("runs", "retry", str(running.run_id), "--dsn", dsn)
    assert result.returncode == 2 and result.stderr.startswith("error: cannot retry run")


# ---- bulk ---------------------------------------------------------------------------------------------------


async def test_bulk_cancel_and_retry(dsn: str) -> None:
    with trio.fail_after(90):
        async with engine_for(dsn) as engine:
            handles = [await engine.start(Pair, n) for n in range(3)]
            cut = datetime.datetime.now(UTC)
            late = await engine.start(Pair, 7)
            other = await engine.start(Squares, [1])
            dry = await engine.cancel_runs(flow=Pair, started_before=cut, dry_run=True)
            assert dry.dry_run and set(dry.run_ids) == {h.run_id for h in handles} and dry.count == 3
            assert (await engine.get_run(handles[0].run_id)).state == "started"
            with pytest.raises(ConfigurationError, match="timezone-aware"):
                await engine.cancel_runs(flow=Pair, started_before=datetime.datetime.now())
            done = await engine.cancel_runs(flow=Pair, started_before=cut, reason="bulk")
            assert set(done.run_ids) == {h.run_id for h in handles} and done.skipped == ()
            assert (await engine.get_run(late.run_id)).state == "started"
            assert (await engine.get_run(other.run_id)).state == "started"
            assert (await engine.retry_runs(flow=Pair, status="failed")).run_ids == ()
            retried = await engine.retry_runs(flow="ctl_pair", status="cancelled")
            assert set(retried.run_ids) == {h.run_id for h in handles}
            await drain(engine, Pair)
            assert [await h.result(timeout=5) for h in handles] == [2, 4, 6]
            handles = [await engine.start(Pair, n) for n in range(2)]
    # `late` completed in the drain above: two runs are started now
    printed = cli("runs", "cancel", "--flow", "ctl_pair", "--status", "started", "--dry-run", "--dsn", dsn)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == "2 runs would be cancelled" and set(lines[1:]) == {str(h.run_id) for h in handles}
    printed = cli("runs", "cancel", "--flow", "ctl_pair", "--reason", "maintenance", "--dsn", dsn)
    assert printed.returncode == 0 and printed.stdout.splitlines()[0] == "2 runs cancelled"
    printed = cli("runs", "retry", "--flow", "ctl_pair", "--status", "cancelled", "--dsn", dsn)
    assert printed.returncode == 0 and printed.stdout.splitlines()[0] == "2 runs retried", printed.stderr
    refused = cli("runs", "cancel", "--flow", "ctl_pair", "--status", "failed", "--dsn", dsn)
    assert refused.returncode == 2 and "'failed': only 'started' runs can be cancelled" in refused.stderr
    refused = cli("runs", "cancel", "--dsn", dsn)
    assert (
        refused.returncode == 2
        and refused.stderr == "error: runs cancel: give either RUN_ID or --flow, not both and not neither\n"
    )
    refused = cli("runs", "retry", "--flow", "ctl_pair", "--started-before", "2026-01-01T00:00", "--dsn", dsn)
    assert refused.returncode == 2 and "has no UTC offset" in refused.stderr


# ---- rerun --------------------------------------------------------------------------------------------------


async def test_rerun_links_and_runs(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_for(dsn) as engine:
            broken.add(5)
            original = await engine.start(Pair, 5)
            await drain(engine, Pair)
            broken.clear()
            again = await engine.rerun(original.run_id, Pair)
            assert again.run_id != original.run_id and again.rerun_of == original.run_id and not again.existed
            await drain(engine, Pair)
            assert await again.result(timeout=5) == 12  # typed: int
            run = await engine.get_run(again.run_id)
            assert (run.rerun_of, run.input, run.state) == (original.run_id, 5, "completed")
            assert (await engine.get_run(original.run_id)).state == "failed"
            untyped = engine.handle(again.run_id)
            await untyped.get()
            assert untyped.rerun_of == original.run_id
            plain = await engine.rerun(str(original.run_id))
            assert plain.flow_slug == "ctl_pair" and plain.rerun_of == original.run_id
            with pytest.raises(RunNotFound):
                await engine.rerun(uuid.uuid4())
            with pytest.raises(Exception, match="is a run of 'ctl_pair', not 'ctl_squares'"):
                await engine.rerun(original.run_id, Squares)
    printed = cli("runs", "rerun", str(original.run_id), "--dsn", dsn)
    assert printed.returncode == 0, printed.stderr
    new_id = uuid.UUID(printed.stdout.strip())
    shown = cli("runs", "show", str(new_id), "--dsn", dsn)
    assert f"rerun of {original.run_id}" in shown.stdout
    # the new run is still queued: cancel it, then retry it, by id
    cancelled = cli("runs", "cancel", str(new_id), "--reason", "by hand", "--by", "me", "--dsn", dsn)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"cancelled run {new_id}\n"), cancelled.stderr
    assert "cancelled" in cli("runs", "list", "--flow", "ctl_pair", "--dsn", dsn).stdout
    retried = cli("runs", "retry", str(new_id), "--dsn", dsn)
    assert (retried.returncode, retried.stdout) == (0, f"retried run {new_id}: 1 tasks queued again\n")
    assert "status started" in cli("runs", "show", str(new_id), "--dsn", dsn).stdout


def test_every_run_control_command_has_help() -> None:
    for command in ("cancel", "retry", "rerun"):
        result = cli("runs", command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout
    assert "--dry-run" in cli("runs", "cancel", "--help").stdout
