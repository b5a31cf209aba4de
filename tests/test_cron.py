"""Cron schedules: validation, wall-clock tick arithmetic, the built-in scheduler (exactly once, leader changes,
catch-up) and pg_cron (PostgreSQL 15), with hostile inputs."""

from __future__ import annotations

import contextlib
import datetime
import functools
import itertools
import json
import logging
import uuid
import zoneinfo
from typing import Any, get_args

import attrs
import pytest
import trio

import pgflow_trio._runtime._cron
from pgflow_trio import (
    ConfigurationError,
    Context,
    DefinitionError,
    Flow,
    Job,
    Schedule,
    ScheduleNotFound,
    WorkerGroup,
    WorkerOptions,
    definition_of,
    flow_from_spec,
    open_engine,
    serve,
    step,
)
from pgflow_trio._definitions._schedule import ScheduleDef, ticks_between
from pgflow_trio._runtime import CronBackend, run_workers
from pgflow_trio._runtime._cron import (
    Scheduler,
    backend_for,
    fire_due,
    list_schedules,
    pause_schedule,
    pg_cron_problem,
    plan_ticks,
    remove_schedule,
    resume_schedule,
    sync_schedules,
)
from pgflow_trio._store import Database, open_database
from pgflow_trio._store._schema import install

from .helpers import FAST, cli, eventually, run_sql

UTC = datetime.UTC
HOSTILE = {"text": "it's $$ a \\ test $body$ '; DROP TABLE x; --", "nested": ["\\\\", "$$", "'"]}


@attrs.frozen
class Report:
    kind: str


class EverySecond(Job[dict[str, Any], int], queue="every_second", cron=Schedule("* * * * * *", input=HOSTILE)):
    async def perform(self, payload: dict[str, Any], ctx: Context) -> int:
        assert payload == HOSTILE
        return 1


# ---- definitions ---------------------------------------------------------------------------------------------


def test_cron_on_flows_and_jobs_becomes_part_of_the_definition() -> None:
    class Daily(Flow[Report, int], cron=Schedule("0 9 * * *", input=Report("daily"), timezone="Europe/Berlin")):
        @step
        async def build(self, report: Report) -> int:
            return 1

    (schedule,) = definition_of(Daily).schedules
    assert (schedule.name, schedule.expression, schedule.input, schedule.timezone) == (
        "daily",
        "0 9 * * *",
        {"kind": "daily"},
        "Europe/Berlin",
    )
    assert definition_of(EverySecond).schedules[0].has_seconds


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("61 * * * *", r"cron schedule '61 \* \* \* \*' is invalid: .*out of range"),
        ("* * * *", r"has 4 fields; use five \(minute hour day-of-month month day-of-week\)"),
        ("@sometimes", r"unknown cron alias '@sometimes'"),
        (Schedule("0 * * * *", timezone="Mars/Olympus"), r"unknown time zone 'Mars/Olympus'"),
        (Schedule("0 * * * *", catch_up="all"), r"catch_up must be 'skip' or 'once'"),  # type: ignore[arg-type]
        ([Schedule("0 * * * *"), Schedule("5 * * * *")], r"several schedules must name each"),
        (Schedule("0 * * * *", name="bad-name"), r"schedule name 'bad-name' must not contain"),
        (Schedule("0 * * * *", input=5), r"the schedule's input does not fit the flow: .*expected Report, got int"),
        (12, r"expected a cron string or Schedule"),
    ],
)
def test_bad_schedules_say_what_is_wrong(cron: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):

        class Bad(Flow[Report, int], cron=cron):
            @step
            async def build(self, report: Report) -> int:
                return 1


def test_cron_in_plain_data_specs() -> None:
    flow = flow_from_spec(
        {"slug": "tenant", "steps": [{"slug": "a"}], "cron": [{"schedule": "@hourly", "input": {"x": 1}, "name": "h"}]}
    )
    assert flow.schedules[0].name == "tenant__h" and flow.schedules[0].five_field == "0 * * * *"
    with pytest.raises(DefinitionError, match=r"unknown keys \['when'\]; allowed: .* @ \$\.cron$"):
        flow_from_spec({"slug": "t", "steps": [{"slug": "a"}], "cron": {"schedule": "@daily", "when": 1}})


# ---- ticks on the wall clock ---------------------------------------------------------------------------------


def _schedule(expression: str, tz: str = "UTC") -> ScheduleDef:
    seconds = len(expression.split()) == 6
    return ScheduleDef("s", "f", expression, None, tz, "skip", seconds)


def _local(ticks: list[datetime.datetime], tz: str) -> list[str]:
    return [t.astimezone(zoneinfo.ZoneInfo(tz)).isoformat() for t in ticks]


def test_daily_schedule_across_dst_in_berlin() -> None:
    berlin = "Europe/Berlin"
    spring = ticks_between(
        _schedule("30 2 * * *", berlin),
        datetime.datetime(2026, 3, 28, 12, tzinfo=UTC),
        datetime.datetime(2026, 3, 31, 12, tzinfo=UTC),
    )
    # 02:30 does not exist on 29 March: it fires once, right after the gap
    assert _local(spring, berlin) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    autumn = ticks_between(
        _schedule("30 2 * * *", berlin),
        datetime.datetime(2026, 10, 24, 12, tzinfo=UTC),
        datetime.datetime(2026, 10, 26, 12, tzinfo=UTC),
    )
    # 02:30 happens twice on 25 October: a daily schedule fires once
    assert _local(autumn, berlin) == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


def test_wildcard_hours_follow_real_time_across_the_repeated_hour() -> None:
    berlin = "Europe/Berlin"
    ticks = ticks_between(
        _schedule("*/30 * * * *", berlin),
        datetime.datetime(2026, 10, 24, 23, 50, tzinfo=UTC),
        datetime.datetime(2026, 10, 25, 2, 10, tzinfo=UTC),
    )
    assert _local(ticks, berlin) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    assert all(b - a == datetime.timedelta(minutes=30) for a, b in itertools.pairwise(ticks))


def test_other_zones_and_seconds() -> None:
    ny = ticks_between(
        _schedule("0 9 * * 1", "America/New_York"),
        datetime.datetime(2026, 3, 1, tzinfo=UTC),
        datetime.datetime(2026, 3, 17, tzinfo=UTC),
    )
    assert [t.isoformat() for t in ny] == [
        "2026-03-02T14:00:00+00:00",
        "2026-03-09T13:00:00+00:00",
        "2026-03-16T13:00:00+00:00",
    ]
    secs = ticks_between(
        _schedule("*/15 * * * * *"),
        datetime.datetime(2026, 1, 1, tzinfo=UTC),
        datetime.datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
    )
    assert len(secs) == 4 and secs[0].second == 15


# ---- the built-in scheduler ----------------------------------------------------------------------------------


async def _ticks(db: Database, name: str) -> list[tuple[datetime.datetime, Any]]:
    rows = await db.fetch(
        "SELECT tick, run_id FROM pgflow_trio.cron_ticks WHERE schedule_name = $1 ORDER BY tick", name
    )
    return [(r["tick"], r["run_id"]) for r in rows]


def _contiguous_seconds(ticks: list[datetime.datetime]) -> bool:
    return all((b - a) == datetime.timedelta(seconds=1) for a, b in itertools.pairwise(ticks))


async def test_competing_schedulers_fire_each_tick_once_across_a_leader_crash(dsn: str) -> None:
    flow = definition_of(EverySecond)
    with trio.fail_after(60):
        async with open_database(dsn, max_size=8) as db:
            from pgflow_trio._store._registry import ensure_flow

            await ensure_flow(db, flow)
            await _live_worker(db, "every_second")
            report = await sync_schedules(db, [flow], backend="builtin")
            assert report.created == ("every_second",)
            schedulers = [Scheduler(db, interval=0.2) for _ in range(3)]
            async with trio.open_nursery() as nursery:
                for scheduler in schedulers:
                    await nursery.start(scheduler.run)
                await eventually(lambda: _has_ticks(db, 3))
                leaders = [s for s in schedulers if s.leading]
                assert len(leaders) == 1
                # kill the leader's lock connection: another scheduler must take over without missing a tick
                killed = await db.fetchval(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objid = ($1::bigint & x'FFFFFFFF'::bigint)",
                    7_301_946_210_553_118_002,
                )
                assert killed
                before = len(await _ticks(db, "every_second"))
                await eventually(lambda: _has_ticks(db, before + 4))
                assert sum(s.terms for s in schedulers) >= 2
                nursery.cancel_scope.cancel()
            ticks = await _ticks(db, "every_second")
            runs = await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'every_second'")
            inputs = await db.fetch(
                "SELECT DISTINCT input::text AS input FROM pgflow.runs WHERE flow_slug = 'every_second'"
            )
    assert _contiguous_seconds([t for t, _ in ticks]), [t.isoformat() for t, _ in ticks]
    assert runs == len(ticks) and all(run_id is not None for _, run_id in ticks)
    assert [json.loads(r["input"]) for r in inputs] == [HOSTILE]


async def _has_ticks(db: Database, count: int) -> bool:
    return len(await _ticks(db, "every_second")) >= count


@pytest.mark.parametrize(("policy", "expected_runs"), [("skip", 0), ("once", 1)])
async def test_catch_up_after_downtime(dsn: str, policy: str, expected_runs: int) -> None:
    flow = flow_from_spec(
        {
            "slug": "hourly_report",
            "steps": [{"slug": "a"}],
            "cron": {"schedule": "* * * * *", "input": {"p": policy}, "catch_up": policy},
        }
    )
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            from pgflow_trio._store._registry import ensure_flow

            await ensure_flow(db, flow)
            await _live_worker(db, "hourly_report")
            await sync_schedules(db, [flow], backend="builtin")
            await db.execute("UPDATE pgflow_trio.schedules SET last_tick = clock_timestamp() - interval '3 hours'")
            await fire_due(db, grace=1.0)
            runs = await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'hourly_report'")
            last = await db.fetchval("SELECT clock_timestamp() - last_tick FROM pgflow_trio.schedules")
            await fire_due(db, grace=1.0)  # nothing new is due: nothing more fires
            again = await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'hourly_report'")
    assert runs == again == expected_runs
    assert last < datetime.timedelta(minutes=2)


async def test_catch_up_once_after_two_days_fires_one_run_and_the_ticks_in_grace_in_one_pass(dsn: str) -> None:
    from pgflow_trio._store._registry import ensure_flow

    flow = flow_from_spec(
        {"slug": "per_second", "steps": [{"slug": "a"}], "cron": {"schedule": "* * * * * *", "catch_up": "once"}}
    )
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            await ensure_flow(db, flow)
            await _live_worker(db, "per_second")
            await sync_schedules(db, [flow], backend="builtin")
            await db.execute("UPDATE pgflow_trio.schedules SET last_tick = clock_timestamp() - interval '2 days'")
            before = await db.fetchval("SELECT clock_timestamp()")
            await fire_due(db, grace=5.0)
            after = await db.fetchval("SELECT clock_timestamp()")
            ticks = [t for t, _ in await _ticks(db, "per_second")]
            runs = await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'per_second'")
            last_tick = await db.fetchval("SELECT last_tick FROM pgflow_trio.schedules")
    # the catch-up run (the latest tick before the 5 s window) and the five ticks within it, all in that one pass
    assert runs == len(ticks) == 6 and _contiguous_seconds(ticks), ticks
    assert before - datetime.timedelta(seconds=1) < ticks[-1] <= after and last_tick == ticks[-1]


def test_a_scheduler_pass_looks_only_at_the_grace_window_and_the_tick_before_it() -> None:
    now = datetime.datetime(2026, 5, 4, 12, 0, 0, 500_000, tzinfo=UTC)
    every_second = attrs.evolve(_schedule("* * * * * *"), catch_up="once")
    plan = plan_ticks(every_second, since=now - datetime.timedelta(days=400), now=now, grace=3.0)
    second = datetime.timedelta(seconds=1)
    top = now.replace(microsecond=0)
    assert (plan.catch_up, plan.skip_to, plan.due) == (top - 3 * second, None, [top - 2 * second, top - second, top])
    skip = plan_ticks(_schedule("0 9 * * *"), since=now - datetime.timedelta(days=9), now=now, grace=60.0)
    assert (skip.catch_up, skip.skip_to, skip.due) == (None, top.replace(hour=9), [])
    # a tick already recorded (pg_cron fired it) and one younger than the head start are left alone
    minutes = _schedule("* * * * *")
    recorded = frozenset({top - datetime.timedelta(minutes=1)})
    pg = plan_ticks(
        minutes, since=now - datetime.timedelta(minutes=3), now=now, grace=300, head_start=15, recorded=recorded
    )
    assert pg.due == [top - datetime.timedelta(minutes=2)]
    # pg_cron gets a head start on a tick; the built-in scheduler fires its own on time
    early = top + 10 * second
    assert plan_ticks(minutes, since=top - 60 * second, now=early, grace=300, head_start=15).due == []
    assert plan_ticks(minutes, since=top - 60 * second, now=early, grace=300).due == [top]


async def test_a_worker_runs_a_flow_declared_with_cron_on_schedule(dsn: str) -> None:
    with trio.fail_after(60):
        async with open_database(dsn, max_size=4) as db, trio.open_nursery() as nursery:
            group: WorkerGroup = await nursery.start(functools.partial(serve, EverySecond, dsn=dsn, options=FAST))

            async def completed_runs() -> bool:
                done = await db.fetchval(
                    "SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'every_second' AND status = 'completed'"
                )
                return bool(done >= 3)

            await eventually(completed_runs)
            group.stop()
            ticks = await _ticks(db, "every_second")
            runs = await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'every_second'")
    assert _contiguous_seconds([t for t, _ in ticks])
    assert runs == len(ticks) >= 3


async def test_sync_updates_and_removes_schedules(dsn: str) -> None:
    first = flow_from_spec(
        {
            "slug": "syncme",
            "steps": [{"slug": "a"}],
            "cron": [{"schedule": "0 * * * *", "name": "a"}, {"schedule": "5 * * * *", "name": "b"}],
        }
    )
    second = flow_from_spec(
        {"slug": "syncme", "steps": [{"slug": "a"}], "cron": [{"schedule": "10 * * * *", "name": "a"}]}
    )
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            report = await sync_schedules(db, [first], backend="builtin")
            assert sorted(report.created) == ["syncme__a", "syncme__b"]
            report = await sync_schedules(db, [second], backend="builtin")
            assert (report.updated, report.removed) == (("syncme__a",), ("syncme__b",))
            assert (await sync_schedules(db, [second], backend="builtin")).unchanged == ("syncme__a",)
            status, missing = await list_schedules(db, [first])
            assert status.drift == ("expression: '0 * * * *' in code, '10 * * * *' in the database",)
            assert (missing.name, missing.drift) == (
                "syncme__b",
                ("in the code but not in the database (run cron sync)",),
            )
            assert len(status.next_ticks) == 3 and all(t.minute == 10 for t in status.next_ticks)


def test_cron_cli_sync_and_list(dsn: str, tmp_path: Any) -> None:
    spec = tmp_path / "f.json"
    spec.write_text(json.dumps({"slug": "clicron", "steps": [{"slug": "a"}], "cron": "*/5 * * * *"}))
    run_sql(dsn, "SELECT pgflow.create_flow('clicron')")
    run_sql(dsn, "SELECT pgflow.add_step('clicron', 'a')")
    synced = cli("cron", "sync", str(spec), "--dsn", dsn)
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.splitlines() == ["backend: builtin", "  created clicron [builtin]"]
    listed = cli("cron", "list", str(spec), "--dsn", dsn)
    assert listed.returncode == 0, listed.stderr
    assert "clicron  [builtin]  */5 * * * * UTC  catch_up=skip" in listed.stdout
    assert "last: never" in listed.stdout and "drift" not in listed.stdout
    # Nobody serves the flow: the schedule is an orphan, and `cron remove` deletes it.
    assert "orphan: no live worker serves flow 'clicron'" in listed.stdout
    assert (
        "it fires nothing until a worker serves flow 'clicron' (or `cron remove clicron` deletes it)" in listed.stdout
    )
    removed = cli("cron", "remove", "clicron", "--dsn", dsn)
    assert (removed.returncode, removed.stdout.strip()) == (0, "removed schedule clicron"), removed.stderr
    assert run_sql(dsn, "SELECT count(*) FROM pgflow_trio.schedules") == [(0,)]
    again = cli("cron", "remove", "clicron", "--dsn", dsn)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "clicron" in again.stderr, again.stderr


def test_worker_cron_backend_comes_from_its_flag_or_environment() -> None:
    from pgflow_trio._cli._commands import build_parser

    assert build_parser().parse_args(["worker", "x.py:X", "--cron-backend", "builtin"]).cron_backend == "builtin"
    wrong = cli("worker", "tests/flows.py:Echo", env={"PGFLOW_CRON_BACKEND": "sometimes"})
    assert wrong.returncode == 2, wrong.stderr
    assert "$PGFLOW_CRON_BACKEND='sometimes': expected one of auto, builtin, pg_cron" in wrong.stderr
    flag = cli("worker", "tests/flows.py:Echo", "--cron-backend", "sometimes")
    assert flag.returncode == 2 and "--cron-backend: 'sometimes': expected one of auto" in flag.stderr, flag.stderr


# ---- pg_cron (PostgreSQL 15) ---------------------------------------------------------------------------------


async def test_pg_cron_schedules_start_flows_exactly_once_per_tick(cron_dsn: str, cron_empty_dsn: str) -> None:
    run_sql(cron_dsn, "CREATE EXTENSION IF NOT EXISTS pg_cron")
    flow = flow_from_spec(
        {"slug": "pgcron_flow", "steps": [{"slug": "a"}], "cron": {"schedule": "* * * * *", "input": HOSTILE}}
    )
    with trio.fail_after(120):
        async with open_database(cron_empty_dsn, max_size=3) as db, open_database(cron_dsn, max_size=2) as cron_db:
            await install(db)
            from pgflow_trio._store._registry import ensure_flow

            await ensure_flow(db, flow)
            await _live_worker(db, "pgcron_flow")
            report = await sync_schedules(db, [flow], cron_db=cron_db)
            assert report.backend == "pg_cron" and report.backends == {"pgcron_flow": "pg_cron"}
            database = await db.fetchval("SELECT current_database()")
            job = await cron_db.fetchrow(
                "SELECT schedule, command, database FROM cron.job WHERE jobname = 'pgflow_trio:pgcron_flow'"
            )
            assert job is not None
            assert dict(job) == {
                "schedule": "* * * * *",
                "command": "SELECT pgflow_trio.fire_schedule('pgcron_flow')",
                "database": database,
            }
            # what pg_cron runs, run twice within one minute: one run, with the input exactly as given
            first = await db.fetchval(job["command"])
            second = await db.fetchval(job["command"])
            assert first is not None and second is None
            # and pg_cron itself fires the next minute's tick
            await eventually(lambda: db.fetchval("SELECT count(*) >= 2 FROM pgflow.runs"), 0.5)
            inputs = await db.fetch("SELECT input::text AS input FROM pgflow.runs")
            assert [json.loads(r["input"]) for r in inputs] == [HOSTILE, HOSTILE]
            ticks = await db.fetch("SELECT tick FROM pgflow_trio.cron_ticks ORDER BY tick")
            assert len(ticks) == 2 and ticks[1]["tick"] - ticks[0]["tick"] == datetime.timedelta(minutes=1)
            # a six-field schedule cannot go to pg_cron: it moves to the built-in scheduler, its job is unscheduled
            seconds = flow_from_spec({"slug": "pgcron_flow", "steps": [{"slug": "a"}], "cron": "* * * * * *"})
            report = await sync_schedules(db, [seconds], cron_db=cron_db)
            assert (report.backend, report.updated, report.warnings) == ("builtin", ("pgcron_flow",), ())
            assert not await cron_db.fetchval("SELECT count(*) FROM cron.job WHERE jobname LIKE 'pgflow_trio:%'")
            assert (await sync_schedules(db, [flow], cron_db=cron_db)).backends == {"pgcron_flow": "pg_cron"}
            # removing the schedule unschedules the job
            plain = flow_from_spec({"slug": "pgcron_flow", "steps": [{"slug": "a"}]})
            assert (await sync_schedules(db, [plain], cron_db=cron_db)).removed == ("pgcron_flow",)
            assert not await cron_db.fetchval("SELECT count(*) FROM cron.job WHERE jobname LIKE 'pgflow_trio:%'")


async def _at_second_16_to_45(db: Database) -> None:
    """Wait until this minute's tick is older than pg_cron's head start and the next minute is far enough away."""
    second = await db.fetchval("SELECT extract(second FROM clock_timestamp())::float8")
    if not 16 <= second <= 45:
        await trio.sleep((16 - second) % 60)


async def test_the_built_in_leader_fires_pg_cron_ticks_missed_within_the_grace_never_those_pg_cron_fired(
    cron_dsn: str, cron_empty_dsn: str
) -> None:
    run_sql(cron_dsn, "CREATE EXTENSION IF NOT EXISTS pg_cron")
    from pgflow_trio._store._registry import ensure_flow

    flow = flow_from_spec({"slug": "pgcron_missed", "steps": [{"slug": "a"}], "cron": "* * * * *"})
    with trio.fail_after(120):
        async with open_database(cron_empty_dsn, max_size=3) as db, open_database(cron_dsn, max_size=2) as cron_db:
            await install(db)
            await ensure_flow(db, flow)
            try:
                assert (await sync_schedules(db, [flow], cron_db=cron_db)).backends == {"pgcron_missed": "pg_cron"}
                command = await cron_db.fetchval(
                    "SELECT command FROM cron.job WHERE jobname = 'pgflow_trio:pgcron_missed'"
                )
                await _at_second_16_to_45(db)
                # The schedule has existed for three minutes with no worker serving the flow: pg_cron's calls (the job's
                # command, exactly as pg_cron runs it) fired nothing and recorded nothing.
                await db.execute(
                    "UPDATE pgflow_trio.schedules SET created_at = clock_timestamp() - interval '3 minutes'"
                )
                assert await db.fetchval(command) is None
                await _live_worker(db, "pgcron_missed")
                # A worker is back: pg_cron fires this minute's tick; the built-in leader fires the two it missed.
                this_minute = await db.fetchval("SELECT date_trunc('minute', clock_timestamp())")
                by_pg_cron = await db.fetchval(command)
                assert by_pg_cron is not None or await _ticks(db, "pgcron_missed")  # (or pg_cron itself just did)
                await fire_due(db, grace=300.0)
                await fire_due(db, grace=300.0)
                ticks = await _ticks(db, "pgcron_missed")
                runs = await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'pgcron_missed'")
            finally:  # its pg_cron job would outlive the test's database (and fail the next pg_cron test)
                with trio.CancelScope(shield=True), trio.move_on_after(10), contextlib.suppress(ScheduleNotFound):
                    await remove_schedule(db, "pgcron_missed", cron_db=cron_db)
    minute = datetime.timedelta(minutes=1)
    assert [t for t, _ in ticks] == [this_minute - 2 * minute, this_minute - minute, this_minute]
    assert runs == 3 and by_pg_cron in (None, ticks[-1][1])


async def test_pg_cron_is_chosen_only_where_it_is_installed(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    flow = flow_from_spec({"slug": "wants_pg_cron", "steps": [{"slug": "a"}], "cron": "@hourly"})
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1) as db:
            assert (await sync_schedules(db, [flow], backend="auto")).backends == {"wants_pg_cron": "builtin"}
            assert caplog.records == []
            report = await sync_schedules(db, [flow], backend="pg_cron")
    assert (report.backend, report.backends) == ("builtin", {"wants_pg_cron": "builtin"})
    assert report.warnings == ("schedule wants_pg_cron: pg_cron is not installed; it runs on the built-in scheduler",)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == list(report.warnings)


def test_each_schedule_gets_its_backend_from_one_preference_type() -> None:
    plain, berlin = _schedule("0 9 * * *"), _schedule("0 9 * * *", "Europe/Berlin")
    assert [backend_for(plain, preference, True)[0] for preference in get_args(CronBackend)] == [
        "pg_cron",
        "builtin",
        "pg_cron",
    ]
    assert backend_for(plain, "auto", False) == ("builtin", None)
    assert backend_for(berlin, "auto", True) == ("builtin", None)
    assert backend_for(berlin, "pg_cron", True)[0] == "builtin"
    # one spelling of the choices: the option's type, also used by the cron module
    assert pgflow_trio._runtime._cron.CronBackend is CronBackend
    assert not hasattr(pgflow_trio._runtime._cron, "Backend") and not hasattr(
        pgflow_trio._runtime._cron, "choose_backend"
    )


def test_worker_options_for_cron() -> None:
    assert WorkerOptions().scheduler and WorkerOptions().sync_schedules
    assert WorkerOptions().cron_backend == "auto" and WorkerOptions(cron_backend="pg_cron").cron_backend == "pg_cron"
    with pytest.raises(ConfigurationError, match="cron_backend must be 'auto', 'builtin' or 'pg_cron', got 'cron'"):
        WorkerOptions(cron_backend="cron")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expression", "timezone", "problem"),
    [
        ("0 9 * * 1-5", "UTC", None),
        ("*/5 0,12 1-15 jan-jun mon", "Etc/UTC", None),
        ("@daily", "UTC", None),
        ("0 9 * * 1-5", "Europe/Berlin", "it follows time zone Europe/Berlin and pg_cron runs in UTC"),
        ("*/10 * * * * *", "UTC", "it has a seconds field"),
        ("0 0 L * *", "UTC", "pg_cron does not understand 'L'"),
        ("0 0 * * 1#2", "UTC", "pg_cron does not understand '1#2'"),
    ],
)
def test_what_pg_cron_can_run(expression: str, timezone: str, problem: str | None) -> None:
    seconds = len(expression.split()) == 6
    assert pg_cron_problem(ScheduleDef("s", "f", expression, None, timezone, "skip", seconds)) == problem


# ---- who owns a schedule ---------------------------------------------------------------------------------------


async def _live_worker(db: Database, queue: str, *, age: float = 0.0, deprecated: bool = False) -> uuid.UUID:
    """Register a worker for `queue` as any worker (of any language) would, heartbeating `age` seconds ago."""
    worker_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO pgflow.workers (worker_id, queue_name, function_name, last_heartbeat_at, deprecated_at) "
        "VALUES ($1, $2, 'elsewhere', now() - make_interval(secs => $3), CASE WHEN $4 THEN now() END)",
        worker_id,
        queue,
        age,
        deprecated,
    )
    return worker_id


async def _fire(db: Database, name: str, tick: datetime.datetime) -> Any:
    return await db.fetchval("SELECT pgflow_trio.fire_schedule($1, $2)", name, tick)


async def test_a_schedule_fires_only_while_a_live_worker_serves_its_flow(dsn: str) -> None:
    from pgflow_trio._store._registry import ensure_flow

    flow = flow_from_spec({"slug": "owned", "steps": [{"slug": "a"}], "cron": "* * * * *"})
    tick = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            await sync_schedules(db, [flow])
            assert await _fire(db, "owned", tick) is None  # the flow is not even in the database
            await ensure_flow(db, flow)
            assert await _fire(db, "owned", tick) is None  # nobody serves it
            await _live_worker(db, "owned", deprecated=True)
            await _live_worker(db, "owned", age=120)
            assert await _fire(db, "owned", tick) is None  # a stopped worker and a silent one do not count
            assert await db.fetchval("SELECT count(*) FROM pgflow_trio.cron_ticks") == 0
            await _live_worker(db, "owned", age=20)
            async with db.transaction() as tx:  # the liveness bound is a setting (60 s unless set)
                await tx.execute("SET LOCAL pgflow_trio.live_worker_seconds = '10'")
                assert await tx.fetchval("SELECT pgflow_trio.fire_schedule('owned', $1)", tick) is None
            for bad in ("soon", "-5", "0", ""):  # not a positive number of seconds: 60 s, and no error
                async with db.transaction() as tx:
                    await tx.execute(f"SET LOCAL pgflow_trio.live_worker_seconds = '{bad}'")
                    assert await tx.fetchval("SELECT pgflow_trio.live_worker_seconds()") == 60
                    assert await tx.fetchval("SELECT pgflow_trio.flow_is_served('owned')")
            assert await _fire(db, "owned", tick) is not None
            assert await _fire(db, "owned", tick) is None  # each tick fires once
            assert await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'owned'") == 1


async def test_schedulers_leave_unserved_flows_alone_and_catch_up_when_a_worker_returns(dsn: str) -> None:
    """A worker serving only every_second must not fire an old tick_job schedule; once a worker serves tick_job
    again within the grace, the ticks it missed fire."""
    from pgflow_trio._store._registry import ensure_flow

    tick_job = flow_from_spec({"slug": "tick_job", "steps": [{"slug": "a"}], "cron": "* * * * * *"})

    async def handler(task_input: Any, ctx: Context) -> int:
        return 1

    with trio.fail_after(60):
        async with open_database(dsn, max_size=4) as db, trio.open_nursery() as nursery:
            await ensure_flow(db, tick_job)
            await sync_schedules(db, [tick_job], backend="builtin")
            created = await db.fetchval("SELECT created_at FROM pgflow_trio.schedules WHERE name = 'tick_job'")
            await nursery.start(functools.partial(serve, EverySecond, dsn=dsn, options=FAST))
            await eventually(lambda: _has_ticks(db, 3))
            assert await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'tick_job'") == 0
            assert await _ticks(db, "tick_job") == []
            (orphan,) = [s for s in await list_schedules(db) if s.name == "tick_job"]
            assert orphan.orphan == "no live worker serves flow 'tick_job' (no worker ever registered)"
            await nursery.start(functools.partial(serve, (tick_job, {"a": handler}), dsn=dsn, options=FAST))
            await eventually(lambda: _ticks_since(db, "tick_job", created, seconds=5))
            ticks = [t for t, _ in await _ticks(db, "tick_job")]
            nursery.cancel_scope.cancel()
    assert _contiguous_seconds(ticks) and ticks[0] - created <= datetime.timedelta(seconds=1), ticks


async def _ticks_since(db: Database, name: str, since: datetime.datetime, *, seconds: int) -> bool:
    ticks = await _ticks(db, name)
    return bool(ticks) and ticks[-1][0] - since >= datetime.timedelta(seconds=seconds)


async def test_list_schedules_reports_orphans_with_a_reason(dsn: str) -> None:
    from pgflow_trio._store._registry import ensure_flow

    specs = {
        slug: flow_from_spec({"slug": slug, "steps": [{"slug": "a"}], "cron": "0 * * * *"})
        for slug in ("gone", "idle", "retired", "served")
    }
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            await sync_schedules(db, list(specs.values()))
            for slug in ("idle", "retired", "served"):
                await ensure_flow(db, specs[slug])
            await _live_worker(db, "retired", age=3 * 3600)
            await _live_worker(db, "served")
            orphans = {s.name: s.orphan for s in await list_schedules(db)}
    assert orphans == {
        "gone": "flow 'gone' is not in the database",
        "idle": "no live worker serves flow 'idle' (no worker ever registered)",
        "retired": "no live worker serves flow 'retired' (last worker seen 3 h ago)",
        "served": None,
    }


async def test_remove_schedule_removes_its_row_and_ticks_and_names_the_others_when_unknown(dsn: str) -> None:
    from pgflow_trio._store._registry import ensure_flow

    flow = flow_from_spec(
        {
            "slug": "removable",
            "steps": [{"slug": "a"}],
            "cron": [{"schedule": "0 * * * *", "name": "a"}, {"schedule": "5 * * * *", "name": "b"}],
        }
    )
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            await ensure_flow(db, flow)
            await _live_worker(db, "removable")
            await sync_schedules(db, [flow])
            assert await _fire(db, "removable__a", datetime.datetime(2026, 1, 1, tzinfo=UTC)) is not None
            assert await remove_schedule(db, "removable__a") is False  # no pg_cron job here
            assert [s.name for s in await list_schedules(db)] == ["removable__b"]
            assert await db.fetchval("SELECT count(*) FROM pgflow_trio.cron_ticks") == 0
            with pytest.raises(ScheduleNotFound, match=r"no schedule 'removable__a'; the schedules are: removable__b"):
                await remove_schedule(db, "removable__a")
            await remove_schedule(db, "removable__b")
            with pytest.raises(ScheduleNotFound, match=r"no schedule 'x'; there are no schedules"):
                await remove_schedule(db, "x")


async def test_a_worker_serves_flows_whose_schedules_pg_cron_cannot_express(
    cron_dsn: str, cron_empty_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    run_sql(cron_dsn, "CREATE EXTENSION IF NOT EXISTS pg_cron")
    flow = flow_from_spec(
        {
            "slug": "office_hours",
            "steps": [{"slug": "a"}],
            "cron": [
                {"schedule": "0 9 * * 1-5", "name": "berlin", "timezone": "Europe/Berlin"},
                {"schedule": "*/10 * * * * *", "name": "seconds"},
                {"schedule": "0 9 * * 1-5", "name": "utc"},
            ],
        }
    )

    async def handler(task_input: Any, ctx: Context) -> int:
        return 1

    with trio.fail_after(120):
        async with open_database(cron_empty_dsn, max_size=12) as db, open_database(cron_dsn, max_size=2) as cron_db:
            await install(db)
            for backend in ("auto", "pg_cron"):
                caplog.clear()
                options = attrs.evolve(FAST, cron_backend=backend)
                async with trio.open_nursery() as nursery:
                    group: WorkerGroup = await nursery.start(
                        functools.partial(run_workers, db, [(flow, {"a": handler})], options, cron_db=cron_db)
                    )
                    nursery.cancel_scope.cancel()
                assert group.schedules is not None
                assert group.schedules.backends == {
                    "office_hours__berlin": "builtin",
                    "office_hours__seconds": "builtin",
                    "office_hours__utc": "pg_cron",
                }
                assert group.schedules.backend == "pg_cron+builtin"
                warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
                expected = (
                    []
                    if backend == "auto"
                    else [
                        "schedule office_hours__berlin: it follows time zone Europe/Berlin and pg_cron runs in UTC; "
                        "it runs on the built-in scheduler",
                        "schedule office_hours__seconds: it has a seconds field; it runs on the built-in scheduler",
                    ]
                )
                assert warnings == expected
            database = await db.fetchval("SELECT current_database()")
            jobs = await cron_db.fetch("SELECT jobname, schedule FROM cron.job WHERE database = $1", database)
            assert [tuple(j) for j in jobs] == [("pgflow_trio:office_hours__utc", "0 9 * * 1-5")]
            assert await remove_schedule(db, "office_hours__utc", cron_db=cron_db) is True
            assert not await cron_db.fetchval("SELECT count(*) FROM cron.job WHERE database = $1", database)


# ---- pausing, resuming and removing schedules ------------------------------------------------------------------


async def _ticks_up_to(db: Database, name: str, until: datetime.datetime) -> list[datetime.datetime]:
    return [t for t, _ in await _ticks(db, name) if t <= until]


@pytest.mark.parametrize(("policy", "caught_up"), [("skip", 0), ("once", 1)])
async def test_a_paused_schedule_fires_nothing_and_on_resume_its_missed_ticks_follow_catch_up(
    dsn: str, policy: str, caught_up: int
) -> None:
    from pgflow_trio._store._registry import ensure_flow

    flow = flow_from_spec(
        {"slug": "minutely", "steps": [{"slug": "a"}], "cron": {"schedule": "* * * * *", "catch_up": policy}}
    )
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            await ensure_flow(db, flow)
            await _live_worker(db, "minutely")
            await sync_schedules(db, [flow], backend="builtin")
            since = await pause_schedule(db, "minutely")
            assert await pause_schedule(db, "minutely") == since  # idempotent
            (listed,) = await list_schedules(db)
            assert listed.paused_at == since and listed.orphan is None
            # paused for three hours: neither the scheduler nor a direct call fires anything
            await db.execute("UPDATE pgflow_trio.schedules SET last_tick = clock_timestamp() - interval '3 hours'")
            await fire_due(db, grace=300.0)
            assert await _fire(db, "minutely", datetime.datetime(2026, 1, 1, tzinfo=UTC)) is None
            assert await _ticks(db, "minutely") == []
            assert await resume_schedule(db, "minutely") is True
            assert await resume_schedule(db, "minutely") is False
            resumed = await db.fetchval("SELECT clock_timestamp()")
            await fire_due(db, grace=300.0)  # the ticks within the grace window were missed while paused: not due
            await fire_due(db, grace=300.0)
            missed = await _ticks_up_to(db, "minutely", resumed)
            runs = await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'minutely'")
    assert len(missed) == caught_up and runs >= caught_up
    if missed:  # the latest tick missed while paused, once
        assert resumed - datetime.timedelta(minutes=1) < missed[0] <= resumed


async def test_a_resumed_schedule_fires_again(dsn: str) -> None:
    from pgflow_trio._store._registry import ensure_flow

    flow = definition_of(EverySecond)
    with trio.fail_after(30):
        async with open_database(dsn, max_size=4) as db:
            await ensure_flow(db, flow)
            await _live_worker(db, "every_second")
            await sync_schedules(db, [flow], backend="builtin")
            await pause_schedule(db, "every_second")
            async with trio.open_nursery() as nursery:
                scheduler = await nursery.start(Scheduler(db, interval=0.1).run)
                await eventually(lambda: _leading(scheduler))
                await trio.sleep(1.5)
                assert await _ticks(db, "every_second") == []
                await resume_schedule(db, "every_second")
                resumed = await db.fetchval("SELECT clock_timestamp()")
                await eventually(lambda: _has_ticks(db, 2))
                nursery.cancel_scope.cancel()
            ticks = [t for t, _ in await _ticks(db, "every_second")]
    assert all(t > resumed - datetime.timedelta(seconds=1) for t in ticks), (resumed, ticks)  # skip: none missed


async def _leading(scheduler: Scheduler) -> bool:
    return scheduler.leading


async def test_pause_resume_and_remove_name_the_schedules_when_unknown_and_orphans_can_be_removed(
    dsn: str, tmp_path: Any
) -> None:
    orphaned = flow_from_spec({"slug": "gone_flow", "steps": [{"slug": "a"}], "cron": "0 * * * *"})
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            await sync_schedules(db, [orphaned])  # its flow was never (or is no longer) in the database
            for call in (pause_schedule, resume_schedule, remove_schedule):
                with pytest.raises(ScheduleNotFound, match=r"no schedule 'x'; the schedules are: gone_flow"):
                    await call(db, "x")
    paused = cli("cron", "pause", "gone_flow", "--dsn", dsn)
    assert paused.returncode == 0 and paused.stdout.startswith("paused schedule gone_flow (since ")
    listed = cli("cron", "list", "--dsn", dsn)
    assert "orphan: flow 'gone_flow' is not in the database" in listed.stdout
    assert "paused since " in listed.stdout and "`cron resume gone_flow`" in listed.stdout
    assert cli("cron", "resume", "gone_flow", "--dsn", dsn).stdout == "resumed schedule gone_flow\n"
    assert cli("cron", "resume", "gone_flow", "--dsn", dsn).stdout == "schedule gone_flow was not paused\n"
    unknown = cli("cron", "pause", "nope", "--dsn", dsn)
    assert unknown.returncode == 2 and "error: there is no schedule 'nope'" in unknown.stderr
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            await engine.pause_schedule("gone_flow")
            assert await engine.remove_schedule("gone_flow") is False  # no pg_cron job here
            with pytest.raises(ScheduleNotFound, match="there are no schedules"):
                await engine.resume_schedule("gone_flow")


async def test_a_paused_pg_cron_schedule_has_an_inactive_job_and_resumes_without_the_ticks_it_missed(
    cron_dsn: str, cron_empty_dsn: str
) -> None:
    run_sql(cron_dsn, "CREATE EXTENSION IF NOT EXISTS pg_cron")
    from pgflow_trio._store._registry import ensure_flow

    flow = flow_from_spec({"slug": "pgcron_paused", "steps": [{"slug": "a"}], "cron": "* * * * *"})
    hourly = flow_from_spec({"slug": "pgcron_paused", "steps": [{"slug": "a"}], "cron": "0 * * * *"})
    job_sql = "SELECT active, schedule, command FROM cron.job WHERE jobname = 'pgflow_trio:pgcron_paused'"
    with trio.fail_after(120):
        async with open_database(cron_empty_dsn, max_size=3) as db, open_database(cron_dsn, max_size=2) as cron_db:
            await install(db)
            await ensure_flow(db, flow)
            await _live_worker(db, "pgcron_paused")
            try:
                assert (await sync_schedules(db, [flow], cron_db=cron_db)).backends == {"pgcron_paused": "pg_cron"}
                await pause_schedule(db, "pgcron_paused", cron_db=cron_db)
                job = await cron_db.fetchrow(job_sql)
                assert job is not None and job["active"] is False
                assert await db.fetchval(job["command"]) is None  # what pg_cron would run fires nothing
                # a worker's sync keeps the job inactive, also when it reschedules it
                await sync_schedules(db, [flow], cron_db=cron_db)
                await sync_schedules(db, [hourly], cron_db=cron_db)
                job = await cron_db.fetchrow(job_sql)
                assert job is not None and (job["active"], job["schedule"]) == (False, "0 * * * *")
                await sync_schedules(db, [flow], cron_db=cron_db)
                # paused for three minutes: the leader must not fire those ticks after the resume (catch_up skip)
                await db.execute(
                    "UPDATE pgflow_trio.schedules SET created_at = clock_timestamp() - interval '3 minutes'"
                )
                await fire_due(db, grace=300.0)
                assert await _ticks(db, "pgcron_paused") == []
                assert await resume_schedule(db, "pgcron_paused", cron_db=cron_db) is True
                resumed = await db.fetchval("SELECT clock_timestamp()")
                job = await cron_db.fetchrow(job_sql)
                assert job is not None and job["active"] is True
                await fire_due(db, grace=300.0)
                assert await _ticks_up_to(db, "pgcron_paused", resumed) == []
                assert await db.fetchval(job["command"]) is not None  # pg_cron's next call fires again
            finally:  # its pg_cron job would outlive the test's database
                with trio.CancelScope(shield=True), trio.move_on_after(10), contextlib.suppress(ScheduleNotFound):
                    await remove_schedule(db, "pgcron_paused", cron_db=cron_db)
            assert not await cron_db.fetchval("SELECT count(*) FROM cron.job WHERE jobname LIKE 'pgflow_trio:%'")
