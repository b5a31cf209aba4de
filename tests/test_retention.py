"""Retention: pruning finished runs with all their rows and messages (engine, CLI), bounded batches that never wait
on a worker, pruning under load, and the leader-elected pruner in worker processes."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from pgflow_trio import (
    ConfigurationError,
    Context,
    Engine,
    Flow,
    FlowNotFound,
    Job,
    PruneReport,
    WorkerGroup,
    WorkerOptions,
    needs_input,
    open_engine,
    serve,
    step,
)
from pgflow_trio._cli._commands import build_parser
from pgflow_trio._runtime._pruner import LEADER_LOCK, describe, parse_duration
from pgflow_trio.testing import drain

from .flows import FanOut
from .helpers import FAST, cli, eventually

DAY = 86400.0


class Partial(Flow[int, dict[str, Any]], slug="partial", max_attempts=1):
    """Fails at once; its sibling waits an hour to start (its task is still queued when the run fails)."""

    @step
    async def boom(self, n: int = needs_input()) -> int:
        raise RuntimeError("no")

    @step(start_delay=3600)
    async def later(self, n: int = needs_input()) -> int:
        return n


class Ping(Job[int, int], queue="ping"):
    async def perform(self, n: int, ctx: Context) -> int:
        return n


@asynccontextmanager
async def engine_on(dsn: str) -> AsyncIterator[Engine]:
    async with open_engine(dsn, events=False) as engine:
        for flow in (FanOut, Partial, Ping):
            await engine.upsert_flow(flow)
        yield engine


async def backdate(engine: Engine, run_id: uuid.UUID, days: float = 30) -> None:
    """Make a run look `days` older: every timestamp moves back together, so pgflow's checks still hold."""
    await engine.db.execute(
        """UPDATE pgflow.runs SET started_at = started_at - make_interval(days => $2),
                  completed_at = completed_at - make_interval(days => $2),
                  failed_at = failed_at - make_interval(days => $2)
           WHERE run_id = $1""",
        run_id,
        days,
    )


async def rows_of(engine: Engine, run_id: uuid.UUID) -> dict[str, int]:
    """How many rows of each kind the run has: runs, step states, tasks, archived and queued messages."""
    counts: dict[str, int] = {}
    for table in ("runs", "step_states", "step_tasks"):
        counts[table] = await engine.db.fetchval(f"SELECT count(*) FROM pgflow.{table} WHERE run_id = $1", run_id)
    archived = queued = 0
    for queue in ("fan_out", "partial", "ping"):
        for prefix in ("a", "q"):
            n = await engine.db.fetchval(
                f"SELECT count(*) FROM pgmq.{prefix}_{queue} WHERE message->>'run_id' = $1", str(run_id)
            )
            if prefix == "a":
                archived += n
            else:
                queued += n
    counts["archived"] = archived
    counts["queued"] = queued
    return counts


async def finished_runs(engine: Engine) -> dict[str, uuid.UUID]:
    """An old completed map run, an old failed run (one message left in its queue), an old started run, a young
    completed run."""
    old_done = await engine.start(FanOut, [1, 2, 3])
    old_failed = await engine.start(Partial, 1)
    young_done = await engine.start(FanOut, [4])
    old_started = await engine.start(Ping, 7)
    await drain(engine, FanOut, Partial)
    # pgflow archives a failed run's messages; leave one in the queue, as a message read by a worker that died
    await engine.db.execute(
        """WITH moved AS (
               DELETE FROM pgmq.a_partial WHERE msg_id = (
                   SELECT message_id FROM pgflow.step_tasks WHERE run_id = $1 AND step_slug = 'later')
               RETURNING msg_id, read_ct, enqueued_at, vt, message)
           INSERT INTO pgmq.q_partial (msg_id, read_ct, enqueued_at, vt, message) OVERRIDING SYSTEM VALUE
           SELECT * FROM moved""",
        old_failed.run_id,
    )
    for handle in (old_done, old_failed, old_started):
        await backdate(engine, handle.run_id)
    assert (await engine.get_run(old_done.run_id)).status == "completed"
    assert (await engine.get_run(old_failed.run_id)).status == "failed"
    assert (await engine.get_run(old_started.run_id)).status == "started"
    return {
        "old_done": old_done.run_id,
        "old_failed": old_failed.run_id,
        "young_done": young_done.run_id,
        "old_started": old_started.run_id,
    }


async def test_prune_deletes_old_finished_runs_with_all_their_rows_and_messages(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_on(dsn) as engine:
            runs = await finished_runs(engine)
            before = {name: await rows_of(engine, run_id) for name, run_id in runs.items()}
            assert before["old_done"] == {
                "runs": 1,
                "step_states": 3,
                "step_tasks": 7,  # 3 double + 3 label + join
                "archived": 7,
                "queued": 0,
            }
            assert before["old_failed"] == {"runs": 1, "step_states": 2, "step_tasks": 2, "archived": 1, "queued": 1}

            dry = await engine.prune_runs(older_than="7d", dry_run=True)
            expected = {"runs": 2, "step_states": 5, "step_tasks": 9, "archived": 8, "queued": 1}
            assert _counts(dry) == expected and dry.dry_run and dry.batches == 0
            assert {name: await rows_of(engine, run_id) for name, run_id in runs.items()} == before

            report = await engine.prune_runs(older_than=datetime.timedelta(days=7))
            assert _counts(report) == expected and not report.dry_run and report.batches == 1
            gone = {"runs": 0, "step_states": 0, "step_tasks": 0, "archived": 0, "queued": 0}
            assert await rows_of(engine, runs["old_done"]) == gone
            assert await rows_of(engine, runs["old_failed"]) == gone
            for kept in ("young_done", "old_started"):  # young, or started whatever its age
                assert await rows_of(engine, runs[kept]) == before[kept]
            assert _counts(await engine.prune_runs(older_than=0, status="failed")) == dict.fromkeys(expected, 0)
            # with no age limit every finished run goes, and still never a started one
            assert (await engine.prune_runs(older_than=0)).runs == 1
            assert await rows_of(engine, runs["old_started"]) == before["old_started"]


def _counts(report: PruneReport) -> dict[str, int]:
    return {
        "runs": report.runs,
        "step_states": report.step_states,
        "step_tasks": report.step_tasks,
        "archived": report.archived_messages,
        "queued": report.queued_messages,
    }


async def test_a_finished_run_with_a_task_still_in_a_handler_waits(dsn: str) -> None:
    """A failed run's sibling task may still be running in a worker: its run is left until the handler is done."""
    with trio.fail_after(60):
        async with engine_on(dsn) as engine:
            runs = await finished_runs(engine)
            failed = runs["old_failed"]
            await engine.db.execute(
                "UPDATE pgflow.step_tasks SET status = 'started', started_at = queued_at "
                "WHERE run_id = $1 AND step_slug = 'later'",
                failed,
            )
            assert (await engine.prune_runs(older_than="7d", status="failed", dry_run=True)).runs == 0
            assert (await engine.prune_runs(older_than="7d", status="failed")).runs == 0
            assert (await rows_of(engine, failed))["runs"] == 1
            await engine.db.execute(
                "UPDATE pgflow.step_tasks SET status = 'queued', started_at = NULL WHERE run_id = $1", failed
            )
            assert (await engine.prune_runs(older_than="7d", status="failed")).runs == 1


async def test_status_and_flow_filters(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_on(dsn) as engine:
            ping = await engine.start(Ping, 1)
            await drain(engine, Ping)
            await backdate(engine, ping.run_id)
            runs = await finished_runs(engine)

            async def exists(run_id: uuid.UUID) -> bool:
                return bool(await engine.db.fetchval("SELECT count(*) FROM pgflow.runs WHERE run_id = $1", run_id))

            assert (await engine.prune_runs(older_than="7d", status="failed")).runs == 1
            assert not await exists(runs["old_failed"]) and await exists(runs["old_done"])
            report = await engine.prune_runs(older_than="7d", status="completed", flow=Ping)
            assert (report.runs, report.step_tasks, report.archived_messages) == (1, 1, 1)
            assert not await exists(ping.run_id) and await exists(runs["old_done"])
            assert (await engine.prune_runs(older_than="7d", status="completed", flow="fan_out")).runs == 1
            assert not await exists(runs["old_done"])
            for kept in ("young_done", "old_started"):
                assert await exists(runs[kept])


async def test_runs_go_in_bounded_batches_oldest_first(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_on(dsn) as engine:
            handles = [await engine.start(Ping, n) for n in range(5)]
            await drain(engine, Ping)
            for age, handle in enumerate(handles):
                await backdate(engine, handle.run_id, days=10 + age)
            report = await engine.prune_runs(older_than="7d", batch_size=2)
            assert (report.runs, report.batches) == (5, 3)
            # oldest first: with a batch of one run and a lock on the oldest, the next oldest goes
            more = [await engine.start(Ping, n) for n in range(2)]
            await drain(engine, Ping)
            await backdate(engine, more[0].run_id, days=20)
            await backdate(engine, more[1].run_id, days=10)
            async with engine.db.transaction() as tx:
                await tx.execute("SELECT 1 FROM pgflow.runs WHERE run_id = $1 FOR UPDATE", more[0].run_id)
                report = await engine.prune_runs(older_than="7d", batch_size=1)
                assert (report.runs, report.skipped_batches) == (1, 0)  # SKIP LOCKED: no wait for the locked run
            remaining = await engine.db.fetch("SELECT run_id FROM pgflow.runs WHERE flow_slug = 'ping'")
            assert [r["run_id"] for r in remaining] == [more[0].run_id]


async def test_a_batch_gives_up_rather_than_wait_on_a_workers_lock(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_on(dsn) as engine:
            handle = await engine.start(Ping, 1)
            await drain(engine, Ping)
            await backdate(engine, handle.run_id)
            async with engine.db.transaction() as tx:
                # a worker holding the run's task (as complete_task would) for longer than the lock timeout
                await tx.execute("SELECT 1 FROM pgflow.step_tasks WHERE run_id = $1 FOR UPDATE", handle.run_id)
                report = await engine.prune_runs(older_than="7d")
            assert (report.runs, report.batches, report.skipped_batches) == (0, 0, 1)
            assert (await engine.prune_runs(older_than="7d")).runs == 1


async def test_archive_rows_older_than_the_cutoff_whose_run_is_gone_go_too(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_on(dsn) as engine:
            handle = await engine.start(Ping, 1)
            await drain(engine, Ping)
            # an old archive row of a run that still exists (the run is young): stays
            await engine.db.execute("UPDATE pgmq.a_ping SET archived_at = archived_at - interval '30 days'")
            insert = """INSERT INTO pgmq.a_ping (msg_id, read_ct, enqueued_at, archived_at, vt, message)
                        VALUES ($1, 1, now() - $2::text::interval, now() - $2::text::interval, now(), $3::jsonb)"""
            runless = json.dumps({"run_id": str(uuid.uuid4()), "step_slug": "perform", "task_index": 0})
            await engine.db.execute(insert, 900001, "30 days", runless)  # old and runless: goes
            await engine.db.execute(insert, 900002, "1 hour", runless)  # runless but young: stays
            await engine.db.execute(insert, 900003, "30 days", '{"note": "not a task"}')  # names no run: stays
            await engine.db.execute(insert, 900004, "30 days", '{"run_id": "not-a-uuid"}')  # stays
            dry = await engine.prune_runs(older_than="7d", dry_run=True)
            assert (dry.runs, dry.archived_messages) == (0, 1)
            report = await engine.prune_runs(older_than="7d")
            assert (report.runs, report.archived_messages) == (0, 1)
            left = await engine.db.fetch("SELECT msg_id FROM pgmq.a_ping ORDER BY msg_id")
            assert len(left) == 4 and 900001 not in [r["msg_id"] for r in left]
            assert await engine.db.fetchval("SELECT count(*) FROM pgflow.runs WHERE run_id = $1", handle.run_id) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"older_than": -1}, "older_than must be a finite duration >= 0, got -1"),
        ({"older_than": "7x"}, "older_than: '7x' is not a duration; write seconds (3600) or a number and a unit"),
        ({"older_than": None}, "older_than must be seconds, a timedelta or a duration such as '7d', got None"),
        ({"older_than": 1, "status": "done"}, "status must be 'completed', 'failed' or 'all', got 'done'"),
        ({"older_than": 1, "batch_size": 0}, "batch_size must be an integer from 1 to 100000, got 0"),
        ({"older_than": 1, "dry_run": "yes"}, "dry_run must be True or False, got 'yes'"),
    ],
)
async def test_bad_arguments_say_what_is_wrong(dsn: str, kwargs: dict[str, Any], message: str) -> None:
    async with open_engine(dsn, events=False) as engine:
        with pytest.raises(ConfigurationError) as caught:
            await engine.prune_runs(**kwargs)
    assert message in str(caught.value)


async def test_an_unknown_flow_is_refused(dsn: str) -> None:
    async with open_engine(dsn, events=False) as engine:
        with pytest.raises(FlowNotFound, match="there is no flow 'nope' in the database"):
            await engine.prune_runs(older_than="7d", flow="nope")


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "1.5", "30s", "30m", "12h", "7d", "2w", " 1h ")] == [
        90,
        1.5,
        30,
        1800,
        43200,
        604800,
        1209600,
        3600,
    ]
    for bad in ("", "7x", "-1d", "d", "1e3", "7 days", "nan"):
        with pytest.raises(ConfigurationError, match="is not a duration"):
            parse_duration(bad)
    assert [describe(s) for s in (604800, 600, 90, 1.5)] == ["1w", "10m", "90s", "1.5s"]


def test_worker_options_and_flags_for_the_pruner() -> None:
    assert WorkerOptions().prune_older_than is None  # off by default
    options = WorkerOptions(prune_older_than="7d", prune_interval=datetime.timedelta(minutes=5), prune_status="failed")
    assert (options.prune_older_than, options.prune_interval, options.prune_status) == (7 * DAY, 300, "failed")
    with pytest.raises(ConfigurationError, match="worker option prune_older_than: '7x' is not a duration"):
        WorkerOptions(prune_older_than="7x")
    with pytest.raises(ConfigurationError, match="worker option prune_interval must be a positive number, got 0"):
        WorkerOptions(prune_older_than=1, prune_interval=0)
    with pytest.raises(ConfigurationError, match="worker option prune_status must be"):
        WorkerOptions(prune_older_than=1, prune_status="some")  # type: ignore[arg-type]
    args = build_parser().parse_args(
        ["worker", "x.py:X", "--prune-older-than", "7d", "--prune-interval", "10m", "--prune-status", "completed"]
    )
    assert (args.prune_older_than, args.prune_interval, args.prune_status) == (7 * DAY, 600, "completed")


def test_worker_pruner_flags_and_environment_are_checked() -> None:
    flag = cli("worker", "tests/flows.py:Echo", "--prune-older-than", "soon")
    assert flag.returncode == 2 and "--prune-older-than: 'soon' is not a duration" in flag.stderr, flag.stderr
    env = cli("worker", "tests/flows.py:Echo", env={"PGFLOW_PRUNE_OLDER_THAN": "7 days"})
    assert env.returncode == 2, env.stderr
    assert "error: $PGFLOW_PRUNE_OLDER_THAN='7 days': '7 days' is not a duration" in env.stderr
    lonely = cli("worker", "tests/flows.py:Echo", "--prune-status", "failed")
    assert lonely.returncode == 2 and "need --prune-older-than" in lonely.stderr, lonely.stderr


async def test_runs_prune_command(dsn: str) -> None:
    with trio.fail_after(60):
        async with engine_on(dsn) as engine:
            runs = await finished_runs(engine)
            dry = await trio.to_thread.run_sync(
                functools.partial(cli, "runs", "prune", "--older-than", "7d", "--dry-run", "--dsn", dsn)
            )
            assert dry.returncode == 0, dry.stderr
            assert dry.stdout.startswith(
                "would delete 2 runs, 5 step states, 9 tasks, 8 archived and 1 queued messages (finished before "
            )
            done = await trio.to_thread.run_sync(
                functools.partial(cli, "runs", "prune", "--older-than", "604800", "--status", "failed", "--dsn", dsn)
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("deleted 1 runs, 2 step states, 2 tasks, 1 archived and 1 queued messages")
            assert (await rows_of(engine, runs["old_failed"]))["runs"] == 0
            flow = await trio.to_thread.run_sync(
                functools.partial(cli, "runs", "prune", "--older-than", "7d", "--flow", "fan_out", "--dsn", dsn)
            )
            assert flow.returncode == 0 and flow.stdout.startswith("deleted 1 runs"), flow.stderr
            bad = await trio.to_thread.run_sync(
                functools.partial(cli, "runs", "prune", "--older-than", "7x", "--dsn", dsn)
            )
            assert bad.returncode == 2
            assert "argument --older-than: '7x' is not a duration; write seconds (3600)" in bad.stderr
            unknown = await trio.to_thread.run_sync(
                functools.partial(cli, "runs", "prune", "--older-than", "1d", "--flow", "nope", "--dsn", dsn)
            )
            assert unknown.returncode == 2 and unknown.stderr.startswith("error: there is no flow 'nope'")


# ---- under load ----------------------------------------------------------------------------------------------

finals: list[str] = []


class Chain(Flow[int, int], slug="chain"):
    """Two steps; the last records its run, so a run that was pruned while started would never record itself."""

    @step
    async def first(self, n: int = needs_input()) -> int:
        await trio.sleep(0.01)
        return n + 1

    @step
    async def last(self, first: int, ctx: Context) -> int:
        finals.append(str(ctx.run_id))
        return first


async def test_pruning_under_load_never_touches_a_started_run(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    finals.clear()
    started: list[str] = []
    reports: list[PruneReport] = []
    with trio.fail_after(120):
        async with open_engine(dsn, events=False, pool_size=30) as engine, trio.open_nursery() as nursery:
            group: WorkerGroup = await nursery.start(functools.partial(engine.serve, Chain, options=FAST))
            assert group.pruner is None  # off unless asked for
            producing = True

            async def prune_repeatedly() -> None:
                while producing:
                    # no age limit: every run is pruned as soon as it completes, never while it runs
                    reports.append(await engine.prune_runs(older_than=0, status="completed", batch_size=5))
                    await trio.sleep(0.01)

            async with trio.open_nursery() as load:
                load.start_soon(prune_repeatedly)
                for n in range(80):
                    started.append(str((await engine.start(Chain, n)).run_id))
                    await trio.sleep(0.005)
                await eventually(lambda: _all_recorded(started))
                producing = False
            group.stop()
            final = await engine.prune_runs(older_than=0, status="completed")
            left = await engine.db.fetchval("SELECT count(*) FROM pgflow.runs")
            orphans = await engine.db.fetchval(
                "SELECT (SELECT count(*) FROM pgflow.step_tasks) + (SELECT count(*) FROM pgflow.step_states)"
            )
    assert sorted(finals) == sorted(started)  # each run's last step ran exactly once
    pruned = sum(r.runs for r in reports) + final.runs
    assert pruned == len(started) and left == 0 and orphans == 0  # every run completed (none failed)
    assert sum(r.runs for r in reports) > 0  # pruning really ran alongside the workers
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("pgflow_trio")]


async def _all_recorded(started: list[str]) -> bool:
    return set(started) <= set(finals)


# ---- the pruner in workers -----------------------------------------------------------------------------------


async def test_one_pruner_leads_and_another_takes_over(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgflow_trio.pruner")
    options = attrs.evolve(FAST, prune_older_than="7d", prune_interval=0.2)
    with trio.fail_after(60):
        async with engine_on(dsn) as engine, trio.open_nursery() as nursery:
            old = await engine.start(Ping, 1)
            await drain(engine, Ping)
            await backdate(engine, old.run_id)
            first: WorkerGroup = await nursery.start(functools.partial(serve, Ping, dsn=dsn, options=options))
            second: WorkerGroup = await nursery.start(functools.partial(serve, Ping, dsn=dsn, options=options))
            pruners = [first.pruner, second.pruner]
            assert all(p is not None for p in pruners)

            async def one_leader() -> bool:
                return sum(bool(p and p.leading) for p in pruners) == 1

            await eventually(one_leader)
            await eventually(lambda: _gone(engine, old.run_id))

            async def logged() -> bool:  # the pruner logs once its transaction committed: maybe after we saw it
                return any("pruner: deleted 1 runs, 1 step states, 1 tasks" in r.getMessage() for r in caplog.records)

            await eventually(logged)
            # connection lost: the leader's session is killed; a pruner leads again
            killed = await engine.db.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objid = ($1::bigint & x'FFFFFFFF'::bigint)",
                LEADER_LOCK,
            )
            assert killed
            await eventually(lambda: _terms_at_least(pruners, 2))
            await eventually(one_leader)
            # the leader's process stops: the other takes over
            leader, other = (first, second) if first.pruner and first.pruner.leading else (second, first)
            assert other.pruner is not None
            terms = other.pruner.terms
            leader.stop()
            await eventually(lambda: _leads_again(other, terms))
            # and it prunes
            again = await engine.start(Ping, 2)
            await eventually(lambda: _finished(engine, again.run_id))
            await backdate(engine, again.run_id)
            await eventually(lambda: _gone(engine, again.run_id))
            nursery.cancel_scope.cancel()


async def _gone(engine: Engine, run_id: uuid.UUID) -> bool:
    return not await engine.db.fetchval("SELECT count(*) FROM pgflow.runs WHERE run_id = $1", run_id)


async def _finished(engine: Engine, run_id: uuid.UUID) -> bool:
    return bool(
        await engine.db.fetchval("SELECT count(*) FROM pgflow.runs WHERE run_id = $1 AND status <> 'started'", run_id)
    )


async def _terms_at_least(pruners: list[Any], terms: int) -> bool:
    return sum(int(p.terms) for p in pruners) >= terms


async def _leads_again(group: WorkerGroup, terms: int) -> bool:
    return group.pruner is not None and group.pruner.leading and group.pruner.terms > terms
