"""Workers against real PostgreSQL: fan-out/fan-in, retries, timeouts, crashes, shutdown, exclusivity, signals."""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from pgflow_trio import (
    ConfigurationError,
    Context,
    FlowMismatch,
    SerializationError,
    TaskInputError,
    WorkerGroup,
    WorkerOptions,
    compile_flow,
    definition_of,
    flow_from_spec,
    serve,
)
from pgflow_trio._runtime._execute import call_handler
from pgflow_trio._store import Database, open_database

from . import flows
from .helpers import FAST, ROOT, eventually, file_exists, run_sql, start_run, wait_for_worker, wait_run


@pytest.fixture(autouse=True)
def _reset_observations() -> None:
    flows.reset()


@asynccontextmanager
async def running(dsn: str, *targets: object, options: WorkerOptions = FAST) -> AsyncIterator[WorkerGroup]:
    """Workers serving `targets` for the duration of the block (cancelled, with tasks handed back, at the end)."""
    async with trio.open_nursery() as nursery:
        group: WorkerGroup = await nursery.start(functools.partial(serve, *targets, dsn=dsn, options=options))
        yield group
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def database(dsn: str) -> AsyncIterator[Database]:
    async with open_database(dsn, max_size=4) as db:
        yield db


async def test_map_steps_fan_out_and_in_including_empty_arrays(dsn: str) -> None:
    with trio.fail_after(30):
        async with database(dsn) as db, running(dsn, flows.FanOut):
            full = await start_run(db, "fan_out", [1, 2, 3])
            empty = await start_run(db, "fan_out", [])
            assert await wait_run(db, full) == ("completed", {"join": {"labels": ["0:2", "1:4", "2:6"], "total": 12}})
            assert await wait_run(db, empty) == ("completed", {"join": {"labels": [], "total": 0}})


async def test_non_array_into_a_root_map_is_rejected_at_start(dsn: str) -> None:
    with trio.fail_after(30):
        async with database(dsn) as db, running(dsn, flows.FanOut):
            with pytest.raises(Exception, match="array"):
                await start_run(db, "fan_out", {"not": "a list"})


async def test_retry_then_success(dsn: str) -> None:
    with trio.fail_after(30):
        async with database(dsn) as db, running(dsn, flows.Flaky):
            run_id = await start_run(db, "flaky", {"order_id": 1, "fail_times": 1})
            assert await wait_run(db, run_id) == ("completed", {"attempt": 2})
            assert flows.seen_attempts == [1, 2]
            row = await db.fetchrow("SELECT attempts_count, status FROM pgflow.step_tasks WHERE run_id = $1", run_id)
            assert row is not None and tuple(row) == (2, "completed")


async def test_retries_exhausted_fail_the_run_and_nothing_else_runs(dsn: str) -> None:
    with trio.fail_after(30):
        async with database(dsn) as db, running(dsn, flows.Doomed):
            run_id = await start_run(db, "doomed", {"order_id": 7})
            status, _ = await wait_run(db, run_id)
            assert status == "failed"
            await trio.sleep(0.5)  # give a wrongly scheduled task the chance to show up
            tasks = await db.fetch(
                "SELECT step_slug, status, attempts_count, error_message FROM pgflow.step_tasks WHERE run_id = $1",
                run_id,
            )
    by_step = {t["step_slug"]: t for t in tasks}
    assert by_step["explode"]["status"] == "failed"
    assert by_step["explode"]["attempts_count"] == 2
    assert by_step["explode"]["error_message"] == "RuntimeError: always"
    assert "after" not in by_step
    assert flows.calls[("explode", 7)] == 2
    assert flows.calls[("after", 0)] == 0


async def test_a_stuck_handler_is_cancelled_at_its_timeout(dsn: str) -> None:
    with trio.fail_after(30):
        async with database(dsn) as db, running(dsn, flows.Stuck):
            run_id = await start_run(db, "stuck", {"order_id": 1})
            assert (await wait_run(db, run_id))[0] == "failed"
            message = await db.fetchval("SELECT error_message FROM pgflow.step_tasks WHERE run_id = $1", run_id)
    assert message == "TimeoutError: step 'hang' exceeded its timeout of 3s"
    assert flows.calls[("hang", 1)] == 1


async def test_falsy_outputs_are_stored_as_json_values(dsn: str) -> None:
    with trio.fail_after(30):
        async with database(dsn) as db, running(dsn, flows.Falsy):
            run_id = await start_run(db, "falsy", 5)
            assert await wait_run(db, run_id) == ("completed", {"zero": 0, "empty": "", "nothing": None, "no": False})
            types = await db.fetch(
                "SELECT step_slug, jsonb_typeof(output) AS t FROM pgflow.step_tasks WHERE run_id = $1", run_id
            )
    assert {r["step_slug"]: r["t"] for r in types} == {
        "zero": "number",
        "empty": "string",
        "nothing": "null",
        "no": "boolean",
    }


async def test_an_output_of_the_wrong_type_fails_with_a_clear_error(dsn: str) -> None:
    with trio.fail_after(30):
        async with database(dsn) as db, running(dsn, flows.BadOutput):
            run_id = await start_run(db, "bad_output", 1)
            assert (await wait_run(db, run_id))[0] == "failed"
            message = await db.fetchval("SELECT error_message FROM pgflow.step_tasks WHERE run_id = $1", run_id)
    assert message == "SerializationError: output of step bad_output.lie: declared int, got str"


async def test_graceful_shutdown_hands_tasks_back_without_using_an_attempt(dsn: str, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    options = attrs.evolve(FAST, shutdown_grace=0.3)
    with trio.fail_after(30):
        async with database(dsn) as db:
            async with trio.open_nursery() as nursery:
                group: WorkerGroup = await nursery.start(
                    functools.partial(serve, flows.SlowOnce, dsn=dsn, options=options)
                )
                run_id = await start_run(db, "slow_once", str(marker))
                await eventually(lambda: file_exists(marker))
                group.stop()  # serve returns once the task is cancelled and handed back
            (worker,) = group.workers
            assert worker.stats.released == 1
            row = await db.fetchrow(
                "SELECT t.status, t.attempts_count, t.started_at, t.last_worker_id, "
                "q.vt <= clock_timestamp() AS visible FROM pgflow.step_tasks t "
                "JOIN pgmq.q_slow_once q ON q.msg_id = t.message_id WHERE t.run_id = $1",
                run_id,
            )
            assert row is not None
            assert dict(row) == {
                "status": "queued",
                "attempts_count": 0,
                "started_at": None,
                "last_worker_id": None,
                "visible": True,
            }
            deprecated = await db.fetchval(
                "SELECT deprecated_at IS NOT NULL FROM pgflow.workers WHERE worker_id = $1", worker.worker_id
            )
            assert deprecated
            async with running(dsn, flows.SlowOnce):
                assert await wait_run(db, run_id) == ("completed", {"work": "attempt 1"})
    assert flows.seen_attempts == [1, 1]


async def test_cancelling_serve_also_hands_tasks_back(dsn: str, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    with trio.fail_after(30):
        async with database(dsn) as db:
            async with running(dsn, flows.SlowOnce):
                run_id = await start_run(db, "slow_once", str(marker))
                await eventually(lambda: file_exists(marker))
            status = await db.fetchval("SELECT status FROM pgflow.step_tasks WHERE run_id = $1", run_id)
            assert status == "queued"


def _worker_process(dsn: str, target: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pgflow_trio", "worker", target, "--dsn", dsn, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_sigkill_mid_task_is_recovered_and_the_run_completes(dsn: str, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    proc = _worker_process(dsn, "tests/flows.py:SlowOnce")
    try:
        with trio.fail_after(60):
            async with database(dsn) as db:
                await wait_for_worker(db, "slow_once")
                run_id = await start_run(db, "slow_once", str(marker))
                await eventually(lambda: file_exists(marker))
                assert int(marker.read_text()) == proc.pid
                os.kill(proc.pid, signal.SIGKILL)
                await trio.to_thread.run_sync(proc.wait)
                async with running(dsn, flows.SlowOnce) as group:
                    assert await wait_run(db, run_id) == ("completed", {"work": "attempt 2"})
                    assert group.workers[0].stats.recovered == 1
                message = await db.fetchval("SELECT error_message FROM pgflow.step_tasks WHERE run_id = $1", run_id)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert message is not None and message.startswith("abandoned task recovered: its worker")


async def test_two_workers_on_one_queue_never_run_a_task_twice_at_once(dsn: str) -> None:
    options = attrs.evolve(FAST, concurrency=4, batch_size=3)
    with trio.fail_after(60):
        async with (
            database(dsn) as db,
            running(dsn, flows.Counted, options=options) as a,
            running(dsn, flows.Counted, options=options) as b,
        ):
            runs = [await start_run(db, "counted", n) for n in range(60)]
            for run_id in runs:
                assert (await wait_run(db, run_id))[0] == "completed"
            both = a.workers[0].stats.completed + b.workers[0].stats.completed
    assert flows.overlaps == []
    assert all(flows.calls[("counted", n)] == 1 for n in range(60))
    assert both == 60


async def test_notify_wakes_the_reader_before_a_slow_poll_would(dsn: str) -> None:
    notify = attrs.evolve(FAST, signal="notify", fallback_poll=60.0)
    slow_poll = attrs.evolve(FAST, signal="poll", poll_min=20.0, poll_max=20.0, poll_seconds=1.0)
    with trio.fail_after(30):
        async with (
            database(dsn) as db,
            running(dsn, flows.Counted, options=notify),
            running(dsn, flows.Falsy, options=slow_poll),
        ):
            await trio.sleep(1.5)  # both readers are idle now: one waiting on notifications, one sleeping on the server
            polled = await start_run(db, "falsy", 1)
            notified = await start_run(db, "counted", 1)
            assert (await wait_run(db, notified))[0] == "completed"
            status = await db.fetchval("SELECT status FROM pgflow.runs WHERE run_id = $1", polled)
            assert status == "started"


async def test_delayed_messages_wake_a_notify_worker_when_they_become_visible(dsn: str) -> None:
    spec = {"slug": "delayed", "steps": [{"slug": "later", "start_delay": 1}]}
    flow = flow_from_spec(spec)

    async def later(task_input: object, ctx: object) -> str:
        return "ran"

    notify = attrs.evolve(FAST, signal="notify", fallback_poll=60.0)
    with trio.fail_after(30):
        async with database(dsn) as db, running(dsn, (flow, {"later": later}), options=notify):
            await trio.sleep(0.3)
            run_id = await start_run(db, "delayed", {})
            assert await wait_run(db, run_id) == ("completed", {"later": "ran"})


async def test_a_deprecated_worker_drains_and_stops(dsn: str) -> None:
    with trio.fail_after(30):
        async with database(dsn) as db, trio.open_nursery() as nursery:
            group: WorkerGroup = await nursery.start(functools.partial(serve, flows.Falsy, dsn=dsn, options=FAST))
            await db.execute(
                "UPDATE pgflow.workers SET deprecated_at = now() WHERE worker_id = $1", group.workers[0].worker_id
            )
        assert group.workers[0].stopping


async def test_a_different_flow_in_the_database_is_refused_with_the_difference(dsn: str) -> None:
    other = flow_from_spec({"slug": "flaky", "max_attempts": 5, "steps": [{"slug": "attempt", "timeout": 9}]})
    with trio.fail_after(30):
        async with database(dsn) as db:
            for statement in compile_flow(other):
                await db.execute(statement)
        with pytest.raises(FlowMismatch) as info:
            await serve(flows.Flaky, dsn=dsn, options=FAST)
    message = str(info.value)
    assert "flow max_attempts: 3 in code, 5 in the database" in message
    assert "flow base_delay: 1 in code, 5 in the database" in message
    assert "step 'attempt' timeout: None in code, 9 in the database" in message
    assert "python -m pgflow_trio flows delete flaky --force" in message


async def test_recovery_is_safe_when_several_workers_run_it_at_once(dsn: str) -> None:
    dead = uuid.uuid4()
    with trio.fail_after(30):
        async with database(dsn) as db:
            for statement in compile_flow(flow_from_spec({"slug": "orphans", "steps": [{"slug": "a"}]})):
                await db.execute(statement)
            await db.execute(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name, last_heartbeat_at) "
                "VALUES ($1, 'orphans', 'gone', now() - interval '1 hour')",
                dead,
            )
            for n in range(20):
                await start_run(db, "orphans", n)
            ids = [r[0] for r in await db.fetch("SELECT msg_id FROM pgmq.read('orphans', 30, 100)")]
            assert len(ids) == 20
            started = await db.fetch("SELECT * FROM pgflow.start_tasks('orphans', $1::bigint[], $2)", ids, dead)
            assert len(started) == 20
    results: list[int] = []

    async def recover() -> None:
        async with open_database(dsn, max_size=1) as db:
            rows = await db.fetch("SELECT * FROM pgflow_trio.recover_stalled_tasks(5, 30, 100)")
            results.append(len(rows))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(recover)
    assert sum(results) == 20
    with trio.fail_after(30):
        async with database(dsn) as db:
            rows = await db.fetch(
                "SELECT status, attempts_count, error_message FROM pgflow.step_tasks WHERE flow_slug = 'orphans'"
            )
    assert {(r["status"], r["attempts_count"]) for r in rows} == {("queued", 1)}
    assert all("stopped heartbeating" in r["error_message"] for r in rows)


async def test_worker_command_processes_runs_started_from_sql_and_exits_on_sigterm(dsn: str) -> None:
    proc = _worker_process(dsn, "examples/process_order.py:ProcessOrder", "--signal", "poll")
    try:
        with trio.fail_after(60):
            async with database(dsn) as db:
                await wait_for_worker(db, "process_order")
                run_id = await db.fetchval("SELECT run_id FROM pgflow.start_flow('process_order', '{\"order_id\": 1}')")
                status, output = await wait_run(db, run_id)
            assert (status, output) == ("completed", {"fulfill": {"order_id": 1, "fulfilled": True}})
            proc.send_signal(signal.SIGTERM)
            code = await trio.to_thread.run_sync(proc.wait)
    finally:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None
    log = proc.stdout.read()
    proc.stdout.close()
    assert code == 0, log
    assert "SIGTERM: stopping" in log


async def test_the_message_of_a_running_task_stays_invisible_until_it_completes(dsn: str) -> None:
    # pgflow 0.8.1's start_tasks leaves the visibility the read gave (its statement setting timeout + 2 s never
    # runs): the worker must extend it from there, or other workers read the message while the task runs.
    options = attrs.evolve(FAST, read_visibility=2, extend_margin=1.0)
    sql = (
        "SELECT extract(epoch FROM q.vt - clock_timestamp())::float8 AS left, q.read_ct FROM pgflow.step_tasks t "
        "JOIN pgmq.q_long_task q ON q.msg_id = t.message_id WHERE t.run_id = $1 AND t.status = 'started'"
    )
    samples: list[tuple[float, int]] = []
    with trio.fail_after(40):
        async with database(dsn) as db, running(dsn, flows.Long, options=options) as group:
            run_id = await start_run(db, "long_task", 6)
            await eventually(lambda: db.fetchrow(sql, run_id))
            while (row := await db.fetchrow(sql, run_id)) is not None:
                samples.append((row["left"], row["read_ct"]))
                await trio.sleep(0.1)
            assert await wait_run(db, run_id) == ("completed", {"work": 6})
            assert group.workers[0].stats.completed == 1
    # read once (by the worker that runs it), never visible since
    assert len(samples) > 20 and min(s[0] for s in samples) > 0 and {s[1] for s in samples} == {1}, samples


async def test_a_task_input_the_handler_cannot_accept_fails_at_once_without_retry(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with database(dsn) as db, running(dsn, flows.Flaky):
            run_id = await start_run(db, "flaky", {"order_id": "seven"})
            assert (await wait_run(db, run_id))[0] == "failed"
            task = await db.fetchrow(
                "SELECT status, attempts_count, error_message FROM pgflow.step_tasks WHERE run_id = $1", run_id
            )
            step = await db.fetchval("SELECT status FROM pgflow.step_states WHERE run_id = $1", run_id)
            pending = await db.fetchval("SELECT count(*) FROM pgmq.q_flaky")
    assert task is not None and (task["status"], task["attempts_count"], step, pending) == ("failed", 1, "failed", 0)
    assert task["error_message"].startswith("TaskInputError: flaky.attempt: input: ")
    assert "@ $.order_id" in task["error_message"]
    assert flows.calls[("flaky", 1)] == 0
    errors = [r.getMessage() for r in caplog.records if r.name == "pgflow_trio.worker" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "failed without retry" in errors[0] and "@ $.order_id" in errors[0]


async def test_only_the_worker_that_started_a_task_can_fail_it_permanently(dsn: str) -> None:
    mine, other = uuid.uuid4(), uuid.uuid4()
    fail = "SELECT pgflow_trio.fail_task_permanently($1, 'a', 0, $2, 'the input does not fit')"
    with trio.fail_after(30):
        async with database(dsn) as db:
            for statement in compile_flow(
                flow_from_spec({"slug": "doomed_input", "max_attempts": 3, "steps": [{"slug": "a"}]})
            ):
                await db.execute(statement)
            for worker_id in (mine, other):
                await db.execute(
                    "INSERT INTO pgflow.workers (worker_id, queue_name, function_name) "
                    "VALUES ($1, 'doomed_input', 'x')",
                    worker_id,
                )
            run_id = await start_run(db, "doomed_input", 1)
            ids = [r[0] for r in await db.fetch("SELECT msg_id FROM pgmq.read('doomed_input', 30, 1)")]
            await db.execute("SELECT * FROM pgflow.start_tasks('doomed_input', $1::bigint[], $2)", ids, mine)
            assert await db.fetchval(fail, run_id, other) is False  # a late call about another worker's attempt
            assert await db.fetchval("SELECT status FROM pgflow.runs WHERE run_id = $1", run_id) == "started"
            assert await db.fetchval(fail, run_id, mine) is True
            assert await db.fetchval(fail, run_id, mine) is False  # no longer started
            task = await db.fetchrow("SELECT status, attempts_count FROM pgflow.step_tasks WHERE run_id = $1", run_id)
            run = await db.fetchval("SELECT status FROM pgflow.runs WHERE run_id = $1", run_id)
    assert task is not None and (task["status"], task["attempts_count"], run) == ("failed", 1, "failed")


async def test_a_heartbeat_interval_too_long_for_the_schedules_liveness_bound_is_refused(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker counts as live for its flow's schedules while it heartbeats within pgflow_trio.live_worker_seconds;
    a heartbeat interval above half of that is refused, naming both settings."""
    (database_name,) = run_sql(dsn, "SELECT current_database()")[0]
    slow = attrs.evolve(FAST, heartbeat_interval=31.0, stale_after=90.0)
    with trio.fail_after(30):
        with pytest.raises(ConfigurationError) as info:
            await serve(flows.Echo, dsn=dsn, options=slow)
        assert "heartbeat_interval (31 s) must be at most half of pgflow_trio.live_worker_seconds (60 s)" in str(
            info.value
        )
        assert "pgflow_trio.live_worker_seconds = '62'" in str(info.value)
        run_sql(dsn, f"ALTER DATABASE \"{database_name}\" SET pgflow_trio.live_worker_seconds = '62'")
        async with running(dsn, flows.Echo, options=slow):
            pass
        run_sql(dsn, f"ALTER DATABASE \"{database_name}\" SET pgflow_trio.live_worker_seconds = 'soon'")
        caplog.clear()
        async with running(dsn, flows.Echo):
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["pgflow_trio.live_worker_seconds = 'soon' is not a positive number of seconds; 60 s apply"]


async def test_call_handler_tells_a_task_input_that_does_not_fit_from_an_output_that_does_not() -> None:
    """The worker and run_inline share call_handler; only a bad input (TaskInputError) is failed without retry."""
    ctx = Context(
        run_id=uuid.uuid4(),
        flow_slug="x",
        step_slug="x",
        task_index=0,
        attempt=1,
        flow_input=None,
        worker_id=uuid.uuid4(),
        msg_id=1,
    )
    flaky = definition_of(flows.Flaky)
    with pytest.raises(TaskInputError, match=r"flaky\.attempt: input: .*@ \$\.order_id"):
        await call_handler(flaky, flaky.step("attempt"), flows.Flaky(), {"run": {"order_id": "seven"}}, ctx)
    lying = definition_of(flows.BadOutput)
    with pytest.raises(SerializationError, match="declared int, got str") as info:
        await call_handler(lying, lying.step("lie"), flows.BadOutput(), {"run": 1}, attrs.evolve(ctx, flow_input=1))
    assert not isinstance(info.value, TaskInputError)


def test_serve_targets_are_typed(tmp_path: Path) -> None:
    """tests/typing/run_types.py checks clean, and each line marked `# type: ignore[code]` really is that error."""
    api = pytest.importorskip("mypy.api")
    typed = ROOT / "tests" / "typing" / "run_types.py"
    out, err, status = api.run(["--config-file", str(ROOT / "mypy.ini"), "--no-incremental", str(typed)])
    assert status == 0, out + err
    source = typed.read_text()
    marker = re.compile(r"  # type: ignore\[([a-z-]+)\]")
    expected = {n: m.group(1) for n, line in enumerate(source.splitlines(), 1) if (m := marker.search(line))}
    assert len(expected) >= 3
    stripped = tmp_path / "run_types_stripped.py"
    stripped.write_text(marker.sub("", source))
    out, err, status = api.run(["--config-file", str(ROOT / "mypy.ini"), "--no-incremental", str(stripped)])
    assert status == 1, out + err
    found = {int(m.group(1)): m.group(2) for m in re.finditer(r":(\d+): error: .*\[([a-z-]+)\]$", out, re.M)}
    assert {n: found.get(n) for n in expected} == expected, out
