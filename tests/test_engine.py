"""The engine API against real PostgreSQL, including bad input."""

from __future__ import annotations

import datetime
import functools
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from pgflow_trio import (
    CORE_VERSION,
    ConfigurationError,
    DefinitionError,
    Engine,
    FlowInUse,
    FlowNotFound,
    RunEvent,
    RunFailed,
    RunNotFound,
    RunTimeout,
    SchemaError,
    SerializationError,
    Snapshot,
    StepEvent,
    WorkerGroup,
    compile_flow,
    definition_of,
    open_engine,
)

from . import flows
from .helpers import FAST

UTC = datetime.UTC


@asynccontextmanager
async def engine_with_workers(dsn: str, *targets: object, **options: object) -> AsyncIterator[Engine]:
    async with open_engine(dsn, **options) as engine, trio.open_nursery() as nursery:
        if targets:
            group: WorkerGroup = await nursery.start(functools.partial(engine.serve, *targets, options=FAST))
        yield engine
        if targets:
            group.stop()
        nursery.cancel_scope.cancel()


async def test_unknown_and_invalid_options_name_the_option(dsn: str) -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'pool'"):
        async with open_engine(dsn, pool=3):  # type: ignore[call-arg]
            pass
    with pytest.raises(ConfigurationError, match=r"engine option pool_size must be an integer from 1 to 200, got 0"):
        async with open_engine(dsn, pool_size=0):
            pass
    with pytest.raises(ConfigurationError, match=r"engine option events must be True or False"):
        async with open_engine(dsn, events="yes"):
            pass


def test_open_engine_takes_exactly_the_engine_options_with_their_defaults() -> None:
    import inspect

    import attrs

    from pgflow_trio import EngineOptions

    parameters = inspect.signature(open_engine).parameters
    for field in attrs.fields(EngineOptions):
        assert parameters[field.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[field.name].default == field.default, field.name
    assert set(parameters) == {"dsn", "install"} | {f.name for f in attrs.fields(EngineOptions)}


async def test_an_incomplete_schema_names_the_install_command(empty_dsn: str) -> None:
    with trio.fail_after(30), pytest.raises(SchemaError, match=r"python -m pgflow_trio db install"):
        async with open_engine(empty_dsn):
            pass


async def test_typed_start_and_result(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.Flaky) as engine:
            handle = await engine.start(flows.Flaky, flows.Order(3))
            assert await handle.result(timeout=20) == 1
            run = await handle.get()
            assert (
                run.status == "completed"
                and run.output == {"attempt": 1}
                and run.input == {"order_id": 3, "fail_times": 0}
            )
            assert engine.core_version == CORE_VERSION == "0.8.1"


async def test_run_failed_carries_the_step_and_its_error(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.Broken) as engine:
            handle = await engine.start(flows.Broken, flows.Order(42))
            with pytest.raises(RunFailed) as info:
                await handle.result(timeout=20)
    assert info.value.step_slug == "charge"
    assert info.value.error == "ValueError: card declined for order 42"
    assert "failed at step 'charge'" in str(info.value)


async def test_start_by_slug_with_plain_json(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.Echo) as engine:
            handle = await engine.start("echo", {"x": [1, 0, False, ""]})
            assert await handle.result(timeout=20) == {"perform": {"echo": {"x": [1, 0, False, ""]}, "attempt": 1}}


async def test_run_id_makes_a_start_idempotent(dsn: str) -> None:
    run_id = uuid.uuid4()
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.Echo) as engine:
            first = await engine.start(flows.Echo, {"n": 1}, run_id=run_id)
            again = await engine.start(flows.Echo, {"n": 2}, run_id=str(run_id))
            assert (first.run_id, first.existed) == (run_id, False)
            assert (again.run_id, again.existed) == (run_id, True)

            racing = uuid.uuid4()
            handles = []

            async def start() -> None:
                handles.append(await engine.start("echo", {"n": 3}, run_id=racing))

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(start)
            assert sorted(h.existed for h in handles) == [False, True, True, True, True]
            count = await engine.db.fetchval(
                "SELECT count(*) FROM pgflow.runs WHERE run_id = ANY($1::uuid[])", [run_id, racing]
            )
            assert count == 2
            assert (await first.result(timeout=20))["perform"]["echo"] == {"n": 1}
            with pytest.raises(DefinitionError, match="already exists for flow 'echo', not 'flaky'"):
                await engine.start("flaky", {"order_id": 1}, run_id=run_id)


async def test_bad_input_to_start(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.Echo, flows.Flaky) as engine:
            with pytest.raises(FlowNotFound, match="there is no flow 'nope' in the database"):
                await engine.start("nope", {})
            with pytest.raises(FlowNotFound, match="a flow slug must not contain"):
                await engine.start("drop table; --", {})
            with pytest.raises(SerializationError, match=r"input of flaky: expected Order, got dict"):
                await engine.start(flows.Flaky, {"order_id": 1})  # type: ignore[arg-type]
            with pytest.raises(SerializationError, match=r"cannot be turned into JSON"):
                await engine.start("echo", {"x": object()})
            with pytest.raises(RunNotFound, match="is not a valid run id"):
                await engine.start("echo", {}, run_id="not-a-uuid")


async def test_transaction_commits_runs_with_the_callers_data_or_neither(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            await engine.db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
            await engine.upsert_flow(flows.Echo)
            async with engine.transaction() as tx:
                await tx.execute("INSERT INTO orders VALUES (1)")
                kept = await tx.start(flows.Echo, {"order": 1})
            with pytest.raises(RuntimeError):
                async with engine.transaction() as tx:
                    await tx.execute("INSERT INTO orders VALUES (2)")
                    dropped = await tx.start(flows.Echo, {"order": 2})
                    raise RuntimeError("caller fails after starting")
            assert await engine.db.fetchval("SELECT array_agg(id) FROM orders") == [1]
            assert (await engine.get_run(kept.run_id)).status == "started"
            with pytest.raises(RunNotFound):
                await engine.get_run(dropped.run_id)
            messages = await engine.db.fetchval("SELECT count(*) FROM pgmq.q_echo")
            assert messages == 1
            # an idempotent start inside a transaction (a savepoint) does not abort it
            async with engine.transaction() as tx:
                again = await tx.start(flows.Echo, {"order": 1}, run_id=kept.run_id)
                await tx.execute("INSERT INTO orders VALUES (3)")
            assert again.existed
            assert await engine.db.fetchval("SELECT count(*) FROM orders") == 2


async def _visible_in(engine: Engine, run_id: uuid.UUID) -> float:
    seconds: float = await engine.db.fetchval(
        "SELECT extract(epoch FROM q.vt - clock_timestamp())::float8 FROM pgmq.q_echo q "
        "JOIN pgflow.step_tasks t ON t.message_id = q.msg_id WHERE t.run_id = $1",
        run_id,
    )
    return seconds


async def test_enqueue_with_delay_or_time(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(flows.Echo)
            delayed = await engine.enqueue(flows.Echo, {"n": 1}, delay=30)
            assert 28 < await _visible_in(engine, delayed.run_id) <= 30
            assert (await engine.get_run(delayed.run_id)).status == "started"  # stored at once
            timed = await engine.enqueue_in(flows.Echo, {"n": 2}, datetime.timedelta(minutes=2))
            assert 118 < await _visible_in(engine, timed.run_id) <= 120
            plus5 = datetime.timezone(datetime.timedelta(hours=5))
            at = datetime.datetime.now(plus5) + datetime.timedelta(seconds=60)
            zoned = await engine.enqueue_at(flows.Echo, {"n": 3}, at)
            assert 55 < await _visible_in(engine, zoned.run_id) <= 60
            past = await engine.enqueue_at(flows.Echo, {"n": 4}, datetime.datetime(2001, 1, 1, tzinfo=UTC))
            assert await _visible_in(engine, past.run_id) <= 0
            now = await engine.enqueue_in(flows.Echo, {"n": 5}, 0)
            assert await _visible_in(engine, now.run_id) <= 0


async def test_enqueue_rejects_naive_times_negative_delays_and_both(dsn: str) -> None:
    async with open_engine(dsn) as engine:
        with pytest.raises(ConfigurationError, match="must be timezone-aware"):
            await engine.enqueue_at(flows.Echo, {}, datetime.datetime(2030, 1, 1))
        with pytest.raises(ConfigurationError, match="delay must not be negative, got -1"):
            await engine.enqueue_in(flows.Echo, {}, -1)
        with pytest.raises(ConfigurationError, match="either delay or at, not both"):
            await engine.enqueue(flows.Echo, {}, delay=1, at=datetime.datetime.now(UTC))
        with pytest.raises(ConfigurationError, match="delay must be a number of seconds"):
            await engine.enqueue(flows.Echo, {}, delay=float("nan"))


async def test_a_delayed_job_runs_when_it_becomes_visible(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.Echo) as engine:
            handle = await engine.enqueue(flows.Echo, {"late": True}, delay=1.5)
            assert (await handle.result(timeout=20))["perform"]["echo"] == {"late": True}
            waited = await engine.db.fetchval(
                "SELECT extract(epoch FROM t.started_at - r.started_at)::float8 FROM pgflow.step_tasks t "
                "JOIN pgflow.runs r USING (run_id) WHERE r.run_id = $1",
                handle.run_id,
            )
            assert waited >= 1.4


async def test_watch_begins_with_a_snapshot_and_ends_with_the_run(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.FanOut) as engine:
            handle = await engine.start(flows.FanOut, [1, 2])
            events = [event async for event in engine.watch(handle.run_id)]
            assert isinstance(events[0], Snapshot)
            assert events[0].run.run_id == handle.run_id
            assert isinstance(events[-1], RunEvent) and events[-1].event == "run:completed"
            steps_completed = {e.step_slug for e in events if isinstance(e, StepEvent) and e.event == "step:completed"}
            seen_in_snapshot = {s.step_slug for s in events[0].run.steps if s.status == "completed"}
            assert steps_completed | seen_in_snapshot == {"double", "label", "join"}
            again = [event async for event in handle.watch()]
            assert len(again) == 1 and isinstance(again[0], Snapshot) and again[0].run.status == "completed"


async def test_result_without_events_and_timeouts(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.Echo, events=False) as engine:
            handle = await engine.start(flows.Echo, {"quiet": 1})
            assert (await handle.result(timeout=20))["perform"]["echo"] == {"quiet": 1}
            with pytest.raises(ConfigurationError, match=r"watch\(\) needs events"):
                async for _ in engine.watch(handle.run_id):
                    pass
        async with open_engine(dsn) as engine:
            pending = await engine.start("echo", {"nobody": "serves me"})
            with pytest.raises(RunTimeout, match=r"did not finish within 0\.2s"):
                await pending.result(timeout=0.2)


async def test_inspection(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.FanOut) as engine:
            handles = [await engine.start(flows.FanOut, [n]) for n in range(5)]
            for h in handles:
                await h.result(timeout=20)
            run = await engine.get_run_with_states(handles[0].run_id)
            assert [s.step_slug for s in run.steps] == ["double", "label", "join"]
            assert all(s.status == "completed" for s in run.steps)
            assert run.steps[0].initial_tasks == 1
            seen = []
            cursor = None
            while True:
                page = await engine.list_runs(flow=flows.FanOut, limit=2, cursor=cursor)
                seen.extend(r.run_id for r in page.runs)
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert seen == [h.run_id for h in reversed(handles)]
            assert len((await engine.list_runs(status="completed")).runs) == 5
            assert (await engine.list_runs(status="failed")).runs == ()
            later = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
            assert (await engine.list_runs(started_after=later)).runs == ()
            with pytest.raises(RunNotFound, match="there is no run"):
                await engine.get_run(uuid.uuid4())
            with pytest.raises(RunNotFound, match="not a valid run id"):
                await engine.get_run_with_states("12345")
            with pytest.raises(ConfigurationError, match="status must be"):
                await engine.list_runs(status="done")
            with pytest.raises(ConfigurationError, match="limit must be"):
                await engine.list_runs(limit=0)
            with pytest.raises(ConfigurationError, match="started_after must be timezone-aware"):
                await engine.list_runs(started_after=datetime.datetime(2020, 1, 1))
            with pytest.raises(DefinitionError, match="invalid cursor"):
                await engine.list_runs(cursor="garbage")


async def test_flows_management(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.FanOut) as engine:
            await (await engine.start(flows.FanOut, [1])).result(timeout=20)
            infos = {f.slug: f for f in await engine.list_flows()}
            assert infos["fan_out"].steps == ("double", "label", "join")
            assert infos["fan_out"].runs == {"completed": 1}
            stored = await engine.get_flow("fan_out")
            ours = definition_of(flows.FanOut)
            assert [(s.slug, s.step_type, set(s.deps)) for s in stored.steps] == [
                (s.slug, s.step_type, set(s.deps)) for s in ours.steps
            ]
            assert (stored.options.max_attempts, stored.options.base_delay, stored.options.timeout) == (3, 5, 60)
            assert (
                compile_flow(stored)[0]
                == "SELECT pgflow.create_flow('fan_out', max_attempts => 3, base_delay => 5, timeout => 60);"
            )
            assert await engine.flow_exists(flows.FanOut)
            assert not await engine.flow_exists("nope")
            with pytest.raises(FlowNotFound):
                await engine.get_flow("nope")
            with pytest.raises(FlowInUse, match="live worker"):
                await engine.delete_flow("fan_out")
            deleted = await engine.delete_flow("fan_out", force=True)
            assert deleted["runs"] == 1
            assert not await engine.flow_exists("fan_out")
            assert not await engine.db.fetchval("SELECT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = 'fan_out')")
            with pytest.raises(FlowNotFound):
                await engine.delete_flow("fan_out")


async def test_upsert_flow_creates_keeps_or_replaces(dsn: str) -> None:
    spec = {"slug": "tenant_42", "steps": [{"slug": "fetch"}, {"slug": "sync", "deps": ["fetch"]}]}
    async with open_engine(dsn) as engine:
        assert await engine.upsert_flow(spec) == "created"
        assert await engine.upsert_flow(spec) == "unchanged"
        run = await engine.start("tenant_42", {"n": 1})
        changed = {**spec, "steps": [*spec["steps"], {"slug": "notify", "deps": ["sync"], "timeout": 5}]}
        assert await engine.upsert_flow(changed) == "replaced"
        with pytest.raises(RunNotFound):
            await engine.get_run(run.run_id)  # replacing deleted the old history
        assert (await engine.get_flow("tenant_42")).step("notify").options.timeout == 5
        with pytest.raises(DefinitionError, match=r"\$.steps\[0\].slug is required"):
            await engine.upsert_flow({"slug": "x", "steps": [{}]})


async def test_runtime_flow_served_with_handlers(dsn: str) -> None:
    spec = {"slug": "runtime", "steps": [{"slug": "a"}, {"slug": "b", "deps": ["a"]}]}

    async def a(task_input: dict[str, object], ctx: object) -> int:
        return 20

    async def b(task_input: dict[str, int], ctx: object) -> int:
        return task_input["a"] + 1

    with trio.fail_after(30):
        async with open_engine(dsn) as engine, trio.open_nursery() as nursery:
            flow = await engine.get_flow("runtime") if await engine.flow_exists("runtime") else None
            assert flow is None
            await engine.upsert_flow(spec)
            definition = await engine.get_flow("runtime")
            group = await nursery.start(functools.partial(engine.serve, (definition, {"a": a, "b": b}), options=FAST))
            assert await (await engine.start("runtime", {})).result(timeout=20) == {"b": 21}
            group.stop()


async def test_health_check(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.Echo) as engine:
            await engine.db.execute(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name, last_heartbeat_at) "
                "VALUES (gen_random_uuid(), 'echo', 'ghost', now() - interval '1 hour')"
            )
            await engine.start("echo", {"waiting": True})
            report = await engine.health_check()
    assert report.ok and report.database == "reachable" and report.core_version == "0.8.1"
    (echo,) = [q for q in report.queues if q.queue == "echo"]
    assert (echo.workers_alive, echo.workers_stale) == (1, 1)
    assert report.problems == ()
    assert report.warnings == ("queue echo: 1 worker(s) stopped heartbeating",)


async def test_health_reports_work_nobody_serves_and_how_long_it_waited(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(flows.Echo)
            await engine.upsert_flow(flows.Broken)
            for _ in range(3):
                await engine.start("echo", {})
            await engine.enqueue("broken", {"order_id": 1}, delay=3600)  # delayed: not waiting for anyone yet
            # Make the echo messages look as if they became visible two minutes ago.
            await engine.db.execute("UPDATE pgmq.q_echo SET vt = now() - interval '117 seconds'")
            unhealthy = await engine.health_check()
            tolerant = await engine.health_check(max_age=None, require_workers=False)
            strict = await engine.health_check(max_age=60, require_workers=False)
    assert not unhealthy.ok
    echo, broken = (next(q for q in unhealthy.queues if q.queue == slug) for slug in ("echo", "broken"))
    assert (echo.depth, echo.visible, echo.workers_alive) == (3, 3, 0)
    assert echo.oldest_visible_age is not None and 117 <= echo.oldest_visible_age < 150
    assert (broken.depth, broken.visible, broken.oldest_visible_age) == (1, 0, None)
    (problem,) = unhealthy.problems
    assert re.fullmatch(r"queue echo: 3 message\(s\) waiting, the oldest for 11\ds, and no live worker", problem)
    assert tolerant.ok and tolerant.problems == ()
    (problem,) = strict.problems
    assert re.fullmatch(r"queue echo: a message has waited 11\ds for a worker \(max age 60s\)", problem)
    with pytest.raises(ConfigurationError, match="max_age"):
        await engine.health_check(max_age=-1)


async def test_health_reads_the_queue_of_a_mixed_case_slug(dsn: str) -> None:
    # pgmq names the queue table of "MixedCase" q_mixedcase
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(flows.MixedCase)
            await engine.start(flows.MixedCase, 1)
            report = await engine.health_check(require_workers=False)
    (queue,) = [q for q in report.queues if q.queue == "MixedCase"]
    assert (report.ok, queue.depth, queue.visible) == (True, 1, 1)


async def test_a_delayed_enqueue_of_a_mixed_case_slug(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(flows.MixedCase)
            await engine.enqueue(flows.MixedCase, 1, delay=3600)
            report = await engine.health_check(require_workers=False)
    (queue,) = [q for q in report.queues if q.queue == "MixedCase"]
    assert (queue.depth, queue.visible) == (1, 0)


async def test_a_handle_from_a_run_id_learns_its_flow(dsn: str) -> None:
    with trio.fail_after(30):
        async with engine_with_workers(dsn, flows.Broken) as engine:
            await engine.upsert_flow(flows.Echo)
            waiting = await engine.start("echo", {})
            with pytest.raises(RunTimeout, match=rf"run {waiting.run_id} of echo did not finish"):
                await engine.handle(waiting.run_id).result(timeout=0.2)
            failing = await engine.start(flows.Broken, flows.Order(order_id=3))
            handle = engine.handle(failing.run_id)
            assert handle.flow_slug is None
            with pytest.raises(RunFailed, match=rf"run {failing.run_id} of broken failed"):
                await handle.result(timeout=20)
            assert handle.flow_slug == "broken"


async def test_open_engine_installs_the_schema_when_asked(empty_dsn: str) -> None:
    with trio.fail_after(120):
        async with open_engine(empty_dsn, install=True) as engine:
            assert (await engine.health_check()).schema_version is not None
        async with open_engine(empty_dsn, install=True) as engine:  # complete: nothing to do
            assert await engine.list_flows() == []


async def test_a_missing_schema_leaves_trio_run_as_one_plain_schema_error(empty_dsn: str) -> None:
    async def main() -> None:  # the README's shape: the engine, then a nursery for workers
        async with open_engine(empty_dsn) as engine, trio.open_nursery():
            await engine.list_flows()

    def run() -> BaseException | None:
        try:
            trio.run(main)
        except BaseException as exc:
            return exc
        return None

    with trio.fail_after(60):
        exc = await trio.to_thread.run_sync(run)
    assert type(exc) is SchemaError
    assert exc.__cause__ is None and exc.__suppress_context__
    message = str(exc)
    assert "\n" not in message
    assert "run `python -m pgflow_trio db install`" in message and "open_engine(install=True)" in message


async def test_serve_opens_the_cron_database_with_the_engines_connect_timeout(dsn: str) -> None:
    from pgflow_trio import ConnectionLost, Job

    class Ticking(Job[None, None], queue="ticking", cron="0 * * * *"):
        async def perform(self, value: None) -> None:
            pass

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(60):
        async with open_engine(dsn, connect_timeout=0.5) as engine, trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(
                ConnectionLost, match=rf"127\.0\.0\.1:{port} accepted the connection but did not answer within 0\.5s"
            ):
                await engine.serve(Ticking, options=FAST, cron_dsn=f"postgresql://u@127.0.0.1:{port}/db")
            # The same database as the cron database: pg_cron is not installed there, so the schedule is built-in.
            group: WorkerGroup = await nursery.start(
                functools.partial(engine.serve, Ticking, options=FAST, cron_dsn=dsn)
            )
            assert group.schedules is not None and group.schedules.backends == {"ticking": "builtin"}
            group.stop()
            nursery.cancel_scope.cancel()
