"""Pausing and resuming a flow's queue: workers stop reading it (running tasks finish), runs still start, health and
`flows list` show the pause, and resuming lets the waiting tasks run."""

from __future__ import annotations

import datetime
import functools
import uuid
from typing import Any

import attrs
import pytest
import trio

from pgflow_trio import Context, Engine, FlowNotFound, WorkerOptions, flow_from_spec, open_engine

from .helpers import FAST, cli, eventually, run_sql

SPEC = {"slug": "pausable", "steps": [{"slug": "work"}]}
NOTIFY = attrs.evolve(FAST, signal="notify", fallback_poll=60.0)
"""Notify mode whose safety poll never comes within a test: only notifications wake the reader."""
POLL = attrs.evolve(FAST, signal="poll", poll_min=0.05, poll_max=0.2, poll_seconds=30.0)
"""Poll mode whose server-side poll lasts longer than a test: a pause must stop it reading all the same."""


@attrs.define
class Handler:
    """The step's handler: records which runs it started, and holds those whose input asks it to until released."""

    started: list[uuid.UUID] = attrs.Factory(list)
    running: trio.Event = attrs.Factory(trio.Event)
    release: trio.Event = attrs.Factory(trio.Event)

    async def __call__(self, task_input: Any, ctx: Context) -> str:
        self.started.append(ctx.run_id)
        if task_input["run"]["hold"]:
            self.running.set()
            await self.release.wait()
        return "done"


async def _status(engine: Engine, run_id: uuid.UUID) -> str:
    return (await engine.get_run(run_id)).status


async def _heartbeat(engine: Engine) -> datetime.datetime:
    beat: datetime.datetime = await engine.db.fetchval(
        "SELECT max(last_heartbeat_at) FROM pgflow.workers WHERE queue_name = 'pausable'"
    )
    return beat


@pytest.mark.parametrize("options", [NOTIFY, POLL], ids=["notify", "poll"])
async def test_a_paused_queue_is_not_read_until_resumed_while_running_tasks_complete(
    dsn: str, options: WorkerOptions
) -> None:
    flow = flow_from_spec(SPEC)
    handler = Handler()
    async with open_engine(dsn) as engine, trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(functools.partial(engine.serve, (flow, {"work": handler}), options=options))
            held = await engine.start("pausable", {"hold": True})
            await handler.running.wait()
            paused = await engine.pause("pausable", reason="maintenance")
            assert paused.reason == "maintenance"
            waiting = [(await engine.start("pausable", {"hold": False})).run_id for _ in range(3)]
            beat = await _heartbeat(engine)
            handler.release.set()
            assert await held.result(timeout=10) == {"work": "done"}  # the running task completed while paused
        with trio.move_on_after(1.5) as watched:  # nothing of the paused queue starts, however long one waits
            await eventually(lambda: _any_started(engine, waiting))
        assert watched.cancelled_caught, "a task of the paused queue started"
        assert handler.started == [held.run_id]
        assert [await _status(engine, run_id) for run_id in waiting] == ["started"] * 3
        tasks = await engine.db.fetch("SELECT status FROM pgflow.step_tasks WHERE run_id = ANY($1::uuid[])", waiting)
        assert [t["status"] for t in tasks] == ["queued"] * 3
        assert await _heartbeat(engine) > beat  # the worker is alive and heartbeating all along
        with trio.fail_after(10):  # far less than the safety poll (60 s) or the server-side poll (30 s)
            assert await engine.resume("pausable") is True
            for run_id in waiting:
                assert await engine.handle(run_id).result(timeout=10) == {"work": "done"}
        assert sorted(handler.started[1:]) == sorted(waiting)
        nursery.cancel_scope.cancel()


async def _any_started(engine: Engine, run_ids: list[uuid.UUID]) -> bool:
    started: bool = await engine.db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pgflow.step_tasks WHERE run_id = ANY($1::uuid[]) AND status <> 'queued')",
        run_ids,
    )
    return started


@pytest.mark.parametrize("options", [NOTIFY, POLL], ids=["notify", "poll"])
async def test_a_pause_stops_an_idle_reader_within_a_second(dsn: str, options: WorkerOptions) -> None:
    """The reader is waiting (on notifications, or inside a long server-side poll) when the pause commits; a run
    started a second later is not read."""
    flow = flow_from_spec(SPEC)
    handler = Handler()
    async with open_engine(dsn) as engine, trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(functools.partial(engine.serve, (flow, {"work": handler}), options=options))
            await trio.sleep(0.5)  # the reader is idle now
            await engine.pause("pausable")
            await trio.sleep(1.0)
            waiting = (await engine.start("pausable", {"hold": False})).run_id
        with trio.move_on_after(1.5) as watched:
            await eventually(lambda: _any_started(engine, [waiting]))
        assert watched.cancelled_caught, "a task of the paused queue started"
        assert handler.started == []
        with trio.fail_after(10):
            await engine.resume("pausable")
            assert await engine.handle(waiting).result(timeout=10) == {"work": "done"}
        nursery.cancel_scope.cancel()


async def test_health_and_flows_list_show_a_paused_queue_which_is_not_a_problem(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(SPEC)
            await engine.start("pausable", {"hold": False})  # no worker serves it
            report = await engine.health_check()
            assert not report.ok and report.problems == (
                "queue pausable: 1 message(s) waiting, the oldest for 0s, and no live worker",
            )
            first = await engine.pause("pausable", reason="deploying")
            again = await engine.pause("pausable")  # idempotent: the first instant and reason stay
            assert again == first and first.reason == "deploying"
            report = await engine.health_check(max_age=0)
            (queue,) = report.queues
            assert report.ok and report.problems == () and queue.paused == first
            assert report.warnings == (
                f"queue pausable: paused since {first.since.isoformat(timespec='seconds')} (deploying); "
                "1 message(s) wait for it to be resumed",
            )
            (info,) = await engine.list_flows()
            assert info.paused == first
    listed = cli("flows", "list", "--dsn", dsn)
    assert listed.returncode == 0 and "PAUSED since" in listed.stdout and ": deploying" in listed.stdout
    health = cli("health", "--dsn", dsn)
    assert health.returncode == 0, health.stdout + health.stderr
    assert "; PAUSED" in health.stdout and "warning: queue pausable: paused since" in health.stdout
    resumed = cli("flows", "resume", "pausable", "--dsn", dsn)
    assert (resumed.returncode, resumed.stdout) == (0, "resumed flow pausable\n")
    assert cli("flows", "resume", "pausable", "--dsn", dsn).stdout == "flow pausable was not paused\n"
    assert cli("health", "--dsn", dsn).returncode == 1  # waiting work and no worker is a problem again
    paused = cli("flows", "pause", "pausable", "--reason", "again", "--dsn", dsn)
    assert paused.returncode == 0 and paused.stdout.startswith("paused flow pausable (since ")
    assert run_sql(dsn, "SELECT queue, reason FROM pgflow_trio.queue_pauses") == [("pausable", "again")]


async def test_a_pause_outlives_replacing_its_flow_and_goes_with_deleting_it(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(SPEC)
            await engine.pause("pausable")
            await engine.upsert_flow({**SPEC, "max_attempts": 5})
            assert (await engine.list_flows())[0].paused is not None
            await engine.delete_flow("pausable")
            await engine.upsert_flow(SPEC)
            assert (await engine.list_flows())[0].paused is None


async def test_pausing_an_unknown_flow_is_flow_not_found(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            with pytest.raises(FlowNotFound, match=r"there is no flow 'nope' in the database"):
                await engine.pause("nope")
            with pytest.raises(FlowNotFound, match=r"there is no flow 'nope' in the database"):
                await engine.resume("nope")
            assert await engine.db.fetchval("SELECT count(*) FROM pgflow_trio.queue_pauses") == 0
    result = cli("flows", "pause", "nope", "--dsn", dsn)
    assert result.returncode == 2 and result.stderr.startswith("error: there is no flow 'nope' in the database")
