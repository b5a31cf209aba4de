"""The dashboard's Overview, Workers, Queues and Schedules pages, against a real database with real runs, workers,
queues and schedules: what each page shows, fragments, escaping, an empty database, a missing queue table, and the
cron describer."""

from __future__ import annotations

import datetime
import functools
import itertools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
from croniter import croniter
from hypothesis import given
from hypothesis import strategies as st

from pgflow_trio import Context, Engine, flow_from_spec, open_engine
from pgflow_trio._dashboard._ops_pages import describe_cron, sparkline
from pgflow_trio._store import _dash_ops
from pgflow_trio.dashboard import create_app
from pgflow_trio.testing import drain

from .helpers import FAST

SPEC = {"slug": "ops_demo", "max_attempts": 1, "steps": [{"slug": "work"}]}
FLOW = flow_from_spec(SPEC)
XSS = "<script>alert(1)</script>"


async def _work(task_input: Any, ctx: Context) -> str:
    if task_input["run"].get("fail"):
        raise RuntimeError("boom " + XSS)
    return "done"


TARGET = (FLOW, {"work": _work})


@asynccontextmanager
async def _client(engine: Engine, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine, **options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client


async def _page(client: httpx.AsyncClient, path: str) -> str:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert "<html" in response.text
    fragment = await client.get(path, params={"fragment": "1"})
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and "<main" not in fragment.text
    return response.text


def _text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">([^<]*)<', html)
    assert match is not None, element_id
    return match.group(1).strip()


async def _finished_runs(engine: Engine, *, completed: int, failed: int) -> None:
    """Runs finished by a drain: `completed` that complete, `failed` whose only attempt fails."""
    await engine.upsert_flow(FLOW)
    for _ in range(completed):
        await engine.start("ops_demo", {"fail": False})
    for _ in range(failed):
        await engine.start("ops_demo", {"fail": True})
    await drain(engine, TARGET)


async def _live_worker(engine: Engine) -> None:
    """A worker row of ops_demo that heartbeats now."""
    await engine.db.execute(
        "INSERT INTO pgflow.workers (queue_name, worker_id, function_name) VALUES ('ops_demo', gen_random_uuid(), 'w')"
    )


# ---- overview ----------------------------------------------------------------------------------------------------


async def test_overview_counts_runs_workers_and_the_task_waiting_longest(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(30):
            await _finished_runs(engine, completed=3, failed=2)
            cancelled = await engine.start("ops_demo", {"fail": False})
            await engine.cancel_run(cancelled.run_id)
            waiting = await engine.start("ops_demo", {"fail": False})  # no worker: it waits, queued and visible
            await _live_worker(engine)
            html = await _page(client, "/")
    assert _text_of(html, "live-workers") == "1"
    assert _text_of(html, "running-runs") == "1"
    assert _text_of(html, "completed-hour") == "3"
    assert _text_of(html, "failed-hour") == "2"  # the cancelled run is not a failure
    assert _text_of(html, "completed-day") == "3"
    assert _text_of(html, "failed-day") == "2"
    assert "cancelled: 1" in html
    assert f"/runs/{waiting.run_id}" in html and "work[0]" in html
    assert _text_of(html, "oldest-waiting") != "—"
    assert html.count('class="spark') == 2 and "<polyline points=" in html
    assert 'data-topics="runs"' in html and 'data-refresh="5.0"' in html


async def test_overview_of_an_empty_database(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(20):
            html = await _page(client, "/")
    assert _text_of(html, "live-workers") == "0"
    assert _text_of(html, "running-runs") == "0"
    assert _text_of(html, "oldest-waiting") == "—"
    assert "no task waits for a worker" in html


async def test_overview_buckets_runs_by_the_hour_they_finished(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(30):
            await _finished_runs(engine, completed=2, failed=1)
            await engine.db.execute(  # one completed run finished 5 hours ago, one 2 days ago (outside the day)
                """UPDATE pgflow.runs SET completed_at = completed_at - interval '5 hours', started_at = started_at
                   - interval '5 hours' WHERE run_id = (SELECT run_id FROM pgflow.runs WHERE status = 'completed'
                   ORDER BY run_id LIMIT 1)"""
            )
            html = await _page(client, "/")
            await engine.db.execute(
                """UPDATE pgflow.runs SET completed_at = completed_at - interval '2 days', started_at = started_at
                   - interval '2 days' WHERE status = 'completed' AND completed_at < now() - interval '1 hour'"""
            )
            later = await _page(client, "/")
    assert (_text_of(html, "completed-hour"), _text_of(html, "completed-day")) == ("1", "2")
    assert (_text_of(later, "completed-hour"), _text_of(later, "completed-day")) == ("1", "1")


# ---- workers -----------------------------------------------------------------------------------------------------


@attrs.define
class Holder:
    """A handler that completes runs asking for it and holds the others until released."""

    running: trio.Event = attrs.Factory(trio.Event)
    release: trio.Event = attrs.Factory(trio.Event)

    async def __call__(self, task_input: Any, ctx: Context) -> str:
        if task_input["run"].get("hold"):
            self.running.set()
            await self.release.wait()
        return "done"


async def test_workers_page_shows_health_running_and_completed_tasks(dsn: str) -> None:
    holder = Holder()
    async with open_engine(dsn, stale_after=2.0) as engine, _client(engine) as client, trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await nursery.start(functools.partial(engine.serve, (FLOW, {"work": holder}), options=FAST))
            for _ in range(2):
                assert await (await engine.start("ops_demo", {})).result(timeout=10) == {"work": "done"}
            held = await engine.start("ops_demo", {"hold": True})
            await holder.running.wait()
            await engine.db.execute(
                """INSERT INTO pgflow.workers (queue_name, worker_id, function_name, started_at, last_heartbeat_at,
                                               deprecated_at)
                   VALUES ('ops_demo', gen_random_uuid(), 'stale-one', now() - interval '1 hour',
                           now() - interval '5 seconds', NULL),
                          ('ops_demo', gen_random_uuid(), 'stopped-one', now() - interval '2 hours',
                           now() - interval '1 hour', now() - interval '1 hour'),
                          ('ops_demo', gen_random_uuid(), 'draining-one', now() - interval '2 hours',
                           now(), now() - interval '1 second'),
                          ('ops_demo', gen_random_uuid(), 'silent-one', now() - interval '2 hours',
                           now() - interval '1 minute', NULL),
                          ('ops_demo', gen_random_uuid(), 'ancient-one', now() - interval '3 days',
                           now() - interval '2 days', NULL)"""
            )
            html = await _page(client, "/workers")
            holder.release.set()
            await held.result(timeout=10)
            nursery.cancel_scope.cancel()
    rows = {
        m.group(2): m.group(1)
        for m in re.finditer(r'<tr class="worker-(\w+)">(?:(?!</tr>).)*?<td class="mono">([^<]*)</td>', html, re.S)
    }
    assert rows["stale-one"] == "stale"
    assert rows["stopped-one"] == "stopped"  # deprecated and silent: it stopped
    assert rows["draining-one"] == "stopping"  # deprecated, still heartbeating: finishing its tasks
    assert rows["silent-one"] == "dead"  # silent far beyond stale_after without saying it stops
    assert "ancient-one" not in html  # silent for more than a day: not listed
    ours = [fn for fn in rows if fn not in ("stale-one", "stopped-one", "draining-one", "silent-one")]
    assert len(ours) == 1 and rows[ours[0]] == "healthy"
    cells = re.search(r'<tr class="worker-healthy">.*?</tr>', html, re.S)
    assert cells is not None
    numbers = re.findall(r'<td class="num">([^<]*)</td>', cells.group(0))
    assert numbers == ["1", "2", "2"]  # running now, completed in the last hour, in the last minute
    assert 'data-refresh="5.0"' in html


async def test_workers_page_of_an_empty_database(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(20):
            html = await _page(client, "/workers")
    assert "No worker has heartbeat in the last day" in html


# ---- queues ------------------------------------------------------------------------------------------------------


async def test_queues_page_shows_depth_ages_pause_and_buttons(dsn: str) -> None:
    other = flow_from_spec({"slug": "ops_other", "steps": [{"slug": "work"}]})
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(30):
            await engine.upsert_flow(FLOW)
            await engine.upsert_flow(other)
            for _ in range(3):
                await engine.start("ops_demo", {})
            await engine.db.execute(  # hide one message, as a running task or a backoff does
                "UPDATE pgmq.q_ops_demo SET vt = clock_timestamp() + interval '1 hour' "
                "WHERE msg_id = (SELECT min(msg_id) FROM pgmq.q_ops_demo)"
            )
            await engine.pause("ops_other", reason="maintenance " + XSS)
            html = await _page(client, "/queues")
    demo = _row(html, "ops_demo")
    assert re.findall(r'<td class="num">([^<]*)', demo)[:4] == [
        "0",
        "2",
        "1",
        "3",
    ]  # workers, visible, invisible, total
    assert 'action="/actions/queues/pause"' in demo and 'value="ops_demo"' in demo
    paused = _row(html, "ops_other")
    assert "status-paused" in paused and 'action="/actions/queues/resume"' in paused
    assert "maintenance &lt;script&gt;alert(1)&lt;/script&gt;" in paused
    assert XSS not in html


def _row(html: str, slug: str) -> str:
    match = re.search(rf'<tr id="queue-{slug}">.*?</tr>', html, re.S)
    assert match is not None, slug
    return match.group(0)


async def test_a_queue_whose_table_is_missing_is_reported(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(30):
            await engine.upsert_flow(FLOW)
            await engine.start("ops_demo", {})
            await engine.db.execute("DROP TABLE pgmq.q_ops_demo")
            html = await _page(client, "/queues")
            overview = await _page(client, "/")
    assert "its queue table does not exist" in _row(html, "ops_demo")
    assert "Queue table missing for" in overview


async def test_queue_counts_stop_at_the_cap(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dash_ops, "COUNT_CAP", 2)
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(30):
            await engine.upsert_flow(FLOW)
            for _ in range(3):
                await engine.start("ops_demo", {})
            html = await _page(client, "/queues")
    cells = re.findall(r'<td class="num">([^<]*)', _row(html, "ops_demo"))
    assert [c.strip() for c in cells[:4]] == ["0", "2+", "—", "2+"]  # workers, visible, invisible, total


async def test_a_queue_table_dropped_after_it_was_looked_up_reads_as_missing(dsn: str) -> None:
    async with open_engine(dsn) as engine:
        with trio.fail_after(20):
            await engine.upsert_flow(FLOW)
            await engine.db.execute("DROP TABLE pgmq.q_ops_demo")
            stats = await engine.db.run(functools.partial(_dash_ops._queue_stats, slugs=["ops_demo"]))
    assert stats == {}


async def test_a_table_dropped_mid_query_marks_only_its_own_queue_missing(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = flow_from_spec({"slug": "ops_other", "steps": [{"slug": "work"}]})
    looked_up = _dash_ops._queues_with_tables

    async def before_the_drop(con: Any) -> list[Any]:
        """The tables as they were looked up just before one was dropped."""
        return [attrs.evolve(q, has_table=True) for q in await looked_up(con)]

    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(30):
            await engine.upsert_flow(FLOW)
            await engine.upsert_flow(other)
            await engine.start("ops_other", {})
            await engine.start("ops_demo", {})
            await engine.db.execute("DROP TABLE pgmq.q_ops_demo")
            stats = await engine.db.run(functools.partial(_dash_ops._queue_stats, slugs=["ops_demo", "ops_other"]))
            assert set(stats) == {"ops_other"} and stats["ops_other"].total.value == 1
            monkeypatch.setattr(_dash_ops, "_queues_with_tables", before_the_drop)
            html = await _page(client, "/queues")
            overview = await engine.db.run(functools.partial(_dash_ops.overview, stale_after=5.0))
    assert "its queue table does not exist" in _row(html, "ops_demo")
    assert "its queue table does not exist" not in _row(html, "ops_other")
    assert overview.missing_queues == ("ops_demo",)
    assert overview.oldest_waiting is not None and overview.oldest_waiting.flow_slug == "ops_other"


async def test_oldest_waiting_prefers_unpaused_queues_and_counts_abandoned_tasks(dsn: str) -> None:
    other = flow_from_spec({"slug": "ops_other", "steps": [{"slug": "work"}]})
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(30):
            await engine.upsert_flow(FLOW)
            await engine.upsert_flow(other)
            parked = await engine.start("ops_other", {})  # the oldest, but its queue is paused
            await engine.pause("ops_other", reason="maintenance")
            await trio.sleep(0.05)
            waiting = await engine.start("ops_demo", {})
            html = await _page(client, "/")
            overview = await engine.db.run(functools.partial(_dash_ops.overview, stale_after=5.0))
            # A worker took the task and died: the task is started, its message readable again.
            await engine.db.execute(
                "UPDATE pgflow.step_tasks SET status = 'started', started_at = now(), attempts_count = 1 "
                "WHERE run_id = $1",
                waiting.run_id,
            )
            abandoned = await engine.db.run(functools.partial(_dash_ops.overview, stale_after=5.0))
    assert overview.oldest_waiting is not None and overview.oldest_waiting.run_id == waiting.run_id
    assert not overview.oldest_waiting.paused
    assert overview.oldest_paused is not None and overview.oldest_paused.run_id == parked.run_id
    card = html.split('id="oldest-waiting"')[1].split("</section>")[0]
    assert card.index(f"/runs/{waiting.run_id}") < card.index(f"/runs/{parked.run_id}")
    assert "status-paused" in card
    assert abandoned.oldest_waiting is not None and abandoned.oldest_waiting.run_id == waiting.run_id
    assert abandoned.oldest_waiting.abandoned


async def test_read_only_hides_queue_buttons(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine, read_only=True) as client:
        with trio.fail_after(20):
            await engine.upsert_flow(FLOW)
            html = await _page(client, "/queues")
    assert "queue-ops_demo" in html and "/actions/" not in html


async def test_queues_page_of_an_empty_database(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(20):
            html = await _page(client, "/queues")
    assert "No flow in the database yet" in html


# ---- schedules ---------------------------------------------------------------------------------------------------


async def _schedule(engine: Engine, name: str, flow: str, expression: str, tz: str = "UTC") -> None:
    await engine.db.execute(
        "INSERT INTO pgflow_trio.schedules (name, flow_slug, expression, timezone, input, backend) "
        "VALUES ($1, $2, $3, $4, '{}', 'builtin')",
        name,
        flow,
        expression,
        tz,
    )


async def test_schedules_page_shows_readings_next_fires_last_runs_and_problems(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(30):
            await engine.upsert_flow(FLOW)
            await _live_worker(engine)  # a live worker serves the flow: only then does a schedule fire
            await _schedule(engine, "nightly", "ops_demo", "30 2 * * *", "Europe/Paris")
            await _schedule(engine, "gone", "no_such_flow", "*/5 * * * *")
            await _schedule(engine, XSS, XSS, "7 * * * *")
            await engine.upsert_flow(flow_from_spec({"slug": "ops_other", "steps": [{"slug": "work"}]}))
            await _schedule(engine, "unserved", "ops_other", "0 6 * * 1-5")
            fired = [
                await engine.db.fetchval("SELECT pgflow_trio.fire_schedule('nightly', $1)", tick)
                for tick in (datetime.datetime(2026, 1, d, 1, 30, tzinfo=datetime.UTC) for d in (1, 2))
            ]
            await engine.cancel_run(fired[1])
            # A cancellation row on a run that did not fail does not make it cancelled (pgflow_trio.run_state).
            await engine.db.execute("INSERT INTO pgflow_trio.run_cancellations (run_id) VALUES ($1)", fired[0])
            await engine.pause_schedule("gone")
            await _schedule(engine, "held", "ops_demo", "0 4 * * *")
            await engine.pause_schedule("held")
            html = await _page(client, "/schedules")
    nightly = _schedule_row(html, "nightly")
    assert "daily at 02:30" in nightly and "Europe/Paris" in nightly and "builtin" in nightly
    assert all(f"/runs/{run_id}" in nightly for run_id in fired)
    assert "status-cancelled" in nightly and "status-started" in nightly
    assert nightly.count(" 02:30:00 Europe/Paris") == 3  # the next three fires, on Paris's wall clock
    assert nightly.count('class="status status-started"') == 1 and nightly.count("status-cancelled") == 1
    assert "when resumed" not in nightly and "ops-next-fire held" not in nightly
    assert 'action="/actions/schedules/pause"' in nightly and 'value="nightly"' in nightly
    gone = _schedule_row(html, "gone")
    assert "every 5 minutes" in gone and "orphaned: its flow no longer exists" in gone
    assert "status-paused" in gone and 'action="/actions/schedules/resume"' in gone
    held = _schedule_row(html, "held")
    for row in (gone, held):  # paused or orphaned: the times it would fire, marked as such
        assert row.count('class="ops-next-fire held"') == 3 and row.count("would fire at") == 3
    assert "when resumed" in held and "when its flow is back and resumed" in gone
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped in html and XSS not in html
    assert "hourly at :07" in _schedule_row(html, escaped)
    assert "no worker has ever served its flow" in _schedule_row(html, "unserved")


def _schedule_row(html: str, name: str) -> str:
    match = re.search(rf'<tr>\s*<td class="mono">{re.escape(name)}</td>.*?</tr>', html, re.S)
    assert match is not None, name
    return match.group(0)


async def test_schedules_page_of_an_empty_database(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(20):
            html = await _page(client, "/schedules")
    assert "No schedule." in html


async def test_worker_names_and_slugs_are_escaped_everywhere(dsn: str) -> None:
    async with open_engine(dsn) as engine, _client(engine) as client:
        with trio.fail_after(20):
            await engine.db.execute(
                "INSERT INTO pgflow.workers (queue_name, worker_id, function_name) VALUES ($1, gen_random_uuid(), $1)",
                XSS,
            )
            pages = [await _page(client, path) for path in ("/", "/workers", "/queues", "/schedules")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1]
    assert all(XSS not in page for page in pages)


# ---- pieces ------------------------------------------------------------------------------------------------------


def test_describer_reads_the_common_forms() -> None:
    assert describe_cron("* * * * *") == "every minute"
    assert describe_cron("*/15 * * * *") == "every 15 minutes"
    assert describe_cron("5 * * * *") == "hourly at :05"
    assert describe_cron("@hourly") == "hourly at :00"
    assert describe_cron("0 9 * * *") == "daily at 09:00"
    assert describe_cron("@daily") == "daily at 00:00"
    assert describe_cron("30 8 * * 1-5") == "weekdays at 08:30"
    assert describe_cron("30 8 * * MON-FRI") == "weekdays at 08:30"
    assert describe_cron("0 12 * * 7") == "weekly on Sunday at 12:00"
    assert describe_cron("0 12 * * tue") == "weekly on Tuesday at 12:00"
    assert describe_cron("0 0 15 * *") == "monthly on day 15 at 00:00"
    assert describe_cron("0 0 0 * * *") == "daily at 00:00"  # a zero seconds field
    assert describe_cron("*/10 * * * * *") == "every 10 seconds"
    assert describe_cron("*/7 * * * *") == "cron */7 * * * *"  # fires at :56 then :00: not every 7 minutes
    assert describe_cron("*/45 * * * * *") == "cron */45 * * * * *"
    assert describe_cron("0 0 1 1 *") == "cron 0 0 1 1 *"
    assert describe_cron("0 9,17 * * *") == "cron 0 9,17 * * *"
    assert describe_cron("61 * * * *") == "cron 61 * * * *"
    assert describe_cron("") == "cron "


_BASE = datetime.datetime(2026, 3, 4, 5, 6, tzinfo=datetime.UTC)


def _fires(expression: str, count: int = 4) -> list[datetime.datetime]:
    it = croniter(expression, _BASE, second_at_beginning=True)  # six fields: seconds first, as ours
    return [it.get_next(datetime.datetime) for _ in range(count)]


def _gaps(expression: str, count: int) -> set[float]:
    fires = _fires(expression, count)
    return {(b - a).total_seconds() for a, b in itertools.pairwise(fires)}


@given(st.integers(1, 59), st.sampled_from(["minute", "second"]))
def test_every_n_reads_only_when_croniter_fires_are_n_apart(n: int, unit: str) -> None:
    expression = f"*/{n} * * * *" if unit == "minute" else f"*/{n} * * * * *"
    reading = describe_cron(expression)
    seconds = n * (60 if unit == "minute" else 1)
    gaps = _gaps(expression, 2 * 60 // n + 2)  # past the top of the hour (or minute) at least once
    if reading.startswith("every"):
        assert reading == (f"every {unit}" if n == 1 else f"every {n} {unit}s")
        assert gaps == {float(seconds)}
    else:
        assert reading == f"cron {expression}"
        assert len(gaps) > 1


@given(st.integers(0, 59), st.integers(0, 23), st.sampled_from(["*", "1-5", "3", "WED"]))
def test_daily_and_weekly_readings_match_croniter(minute: int, hour: int, dow: str) -> None:
    expression = f"{minute} {hour} * * {dow}"
    reading = describe_cron(expression)
    assert reading.endswith(f"at {hour:02d}:{minute:02d}")
    fires = _fires(expression)
    assert all((t.hour, t.minute) == (hour, minute) for t in fires)
    if dow == "1-5":
        assert reading.startswith("weekdays") and all(t.weekday() < 5 for t in fires)
    elif dow != "*":
        assert reading.startswith("weekly on Wednesday") and all(t.weekday() == 2 for t in fires)


@given(st.integers(0, 59), st.integers(0, 23), st.integers(1, 31))
def test_monthly_readings_match_croniter(minute: int, hour: int, day: int) -> None:
    expression = f"{minute} {hour} {day} * *"
    assert describe_cron(expression) == f"monthly on day {day} at {hour:02d}:{minute:02d}"
    assert all(t.day == day for t in _fires(expression, 2))


@given(st.text(max_size=40))
def test_describer_never_fails_and_falls_back_to_the_expression(text: str) -> None:
    reading = describe_cron(text)
    assert reading
    if reading.startswith("cron "):
        assert reading == "cron " + " ".join(text.split())


def test_sparkline_scales_into_its_box() -> None:
    line = sparkline([0.0, 5.0, 10.0], "x")
    assert line.points == "0.0,38.0 120.0,20.0 240.0,2.0"
    assert sparkline([0.0, 0.0], "flat").points == "0.0,38.0 240.0,38.0"
