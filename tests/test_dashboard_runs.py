"""The dashboard's Flows, Jobs, Flow, Runs and Run pages and the run's JSON downloads, against real PostgreSQL with
runs made through the engine and `drain`."""

from __future__ import annotations

import datetime
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio

from pgflow_trio import Context, Engine, Flow, Job, map_step, open_engine, step
from pgflow_trio._dashboard._graph import StepMark
from pgflow_trio._dashboard._run_pages import TIMELINE_MIN_BAR, Bar, step_marks, timeline
from pgflow_trio._store import _dash_runs
from pgflow_trio._store._dash_runs import StepView, TaskAttempt
from pgflow_trio.dashboard import create_app
from pgflow_trio.testing import DrainLimitExceeded, drain

from .helpers import run_sql

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(1)>'


class Squares(Flow[list[int], dict[str, Any]], slug="dash_squares"):
    """A root map and a fan-in."""

    @map_step
    async def square(self, n: int) -> int:
        return n * n

    @step
    async def total(self, square: list[int]) -> int:
        return sum(square)


class Boom(Flow[dict[str, Any], int], slug="dash_boom", max_attempts=1):
    """Fails with the input's `text` as its error."""

    @step(timeout=30)
    async def explode(self, payload: dict[str, Any]) -> int:
        raise ValueError(payload["text"])


class Mail(Job[dict[str, Any], dict[str, Any]], queue="dash_mail"):
    async def perform(self, mail: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"sent": mail}


@asynccontextmanager
async def dashboard(dsn: str, **options: Any) -> AsyncIterator[tuple[Engine, httpx.AsyncClient]]:
    async with open_engine(dsn) as engine:
        app = create_app(engine, **options)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield engine, client


async def finished_runs(engine: Engine) -> dict[str, uuid.UUID]:
    """One completed run of each flow and the job, and one failed run."""
    await drain(engine, Squares, Boom, Mail)  # creates the flows
    squares = await engine.start(Squares, [1, 2, 3])
    boom = await engine.start(Boom, {"text": "bad"})
    mail = await engine.enqueue(Mail, {"to": "a@example.com"})
    await drain(engine, Squares, Boom, Mail)
    return {"squares": squares.run_id, "boom": boom.run_id, "mail": mail.run_id}


async def test_every_page_renders_real_runs(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            ids = await finished_runs(engine)
            flows = await client.get("/flows")
            assert flows.status_code == 200, flows.text
            assert "dash_squares" in flows.text and "dash_boom" in flows.text
            assert "dash_mail" not in flows.text
            jobs = await client.get("/jobs")
            assert jobs.status_code == 200, jobs.text
            assert "dash_mail" in jobs.text and "dash_squares" not in jobs.text
            flow = await client.get("/flows/dash_squares")
            assert flow.status_code == 200, flow.text
            assert str(ids["squares"]) in flow.text
            runs = await client.get("/runs")
            assert runs.status_code == 200, runs.text
            for run_id in ids.values():
                assert str(run_id) in runs.text
            run = await client.get(f"/runs/{ids['squares']}")
            assert run.status_code == 200, run.text
            assert "3/3" in run.text
            failed = await client.get(f"/runs/{ids['boom']}")
            assert failed.status_code == 200, failed.text
            assert "bad" in failed.text


def run_links(html: str) -> list[str]:
    """The run ids a runs table links to, in page order."""
    return re.findall(r'href="/runs/([0-9a-f-]{36})"', html)


def link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]+)"', html)
    return None if found is None else found.group(1).replace("&amp;", "&")


async def test_pages_walk_older_and_newer_without_duplicates(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await drain(engine, Mail)
            started = [(await engine.enqueue(Mail, {"n": n})).run_id for n in range(7)]
            newest_first = [str(r) for r in reversed(started)]
            seen: list[list[str]] = []
            url: str | None = "/runs?flow=dash_mail&limit=3"
            while url is not None:
                page = await client.get(url)
                assert page.status_code == 200, page.text
                seen.append(run_links(page.text))
                url = link(page.text, "next")
            assert seen == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
            assert link(page.text, "prev") is not None
            back: list[list[str]] = []
            url = link(page.text, "prev")
            while url is not None:
                page = await client.get(url)
                back.append(run_links(page.text))
                url = link(page.text, "prev")
            assert back == [newest_first[3:6], newest_first[0:3]]
            first = await client.get("/runs?flow=dash_mail&limit=3")
            assert link(first.text, "prev") is None
            assert "flow=dash_mail" in (link(first.text, "next") or "")


async def test_filters_by_flow_state_and_start_time(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            ids = await finished_runs(engine)
            waiting = await engine.start(Boom, {"text": "later"})
            cancelled = await engine.start(Boom, {"text": "never"})
            await engine.cancel_run(cancelled.run_id, reason="not needed")

            async def listed(query: str) -> set[str]:
                page = await client.get("/runs?" + query)
                assert page.status_code == 200, page.text
                return set(run_links(page.text))

            assert await listed("flow=dash_boom") == {str(ids["boom"]), str(waiting.run_id), str(cancelled.run_id)}
            assert await listed("status=failed") == {str(ids["boom"])}
            assert await listed("status=cancelled") == {str(cancelled.run_id)}
            assert await listed("status=started") == {str(waiting.run_id)}
            assert await listed("flow=dash_squares&status=completed") == {str(ids["squares"])}
            later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
            assert await listed("from=" + later.strftime("%Y-%m-%dT%H:%M")) == set()
            assert len(await listed("until=" + later.isoformat().replace("+", "%2B"))) == 5
            assert len(await listed("from=2000-01-01")) == 5


async def test_bad_filter_values_are_400_with_a_message(dsn: str) -> None:
    with trio.fail_after(30):
        async with dashboard(dsn) as (_, client):
            for query, message in (
                ("status=lost", "status must be one of started, completed, failed, cancelled"),
                ("from=yesterday", "from must be a date or date-time"),
                ("until=2026-13-01", "until must be a date or date-time"),
                ("older=garbage", "invalid cursor"),
                ("newer=Zm9vfGJhcg==", "invalid cursor"),
                ("limit=0", "limit must be a whole number from 1 to 200"),
                ("q=xyz", "run id search takes the start of a run id"),
            ):
                page = await client.get("/runs?" + query)
                assert page.status_code == 400, (query, page.text)
                assert message in page.text, (query, page.text)
                assert '<form class="filters"' in page.text
            for path in ("/flows?range=2w", "/jobs?range=1y"):
                page = await client.get(path)
                assert page.status_code == 400
                assert "range must be one of 1h, 24h, 7d, 30d" in page.text


async def test_search_by_prefix_lists_and_a_full_id_opens_the_run(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            ids = await finished_runs(engine)
            target = str(ids["squares"])
            page = await client.get(f"/runs?q={target[:6]}")
            assert page.status_code == 200
            assert target in run_links(page.text)
            assert all(r.startswith(target[:6]) for r in run_links(page.text))
            page = await client.get(f"/runs?q={target[:13].upper()}")  # hyphen and case do not matter
            assert run_links(page.text) == [target]
            for q in (target, target.replace("-", "")):
                opened = await client.get(f"/runs?q={q}")
                assert opened.status_code == 303
                assert opened.headers["location"] == f"/runs/{target}"
            nobody = "0" * 8 if not target.startswith("0" * 8) else "f" * 8
            page = await client.get(f"/runs?q={nobody}")
            assert page.status_code == 200 and run_links(page.text) == []


async def test_json_downloads_whole_values(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            ids = await finished_runs(engine)
            run = ids["squares"]
            expected = {
                f"/runs/{run}/input.json": [1, 2, 3],
                f"/runs/{run}/output/square.json": [1, 4, 9],
                f"/runs/{run}/output/square/1.json": 4,
                f"/runs/{run}/output/total.json": 14,
                f"/runs/{ids['mail']}/output/perform.json": {"sent": {"to": "a@example.com"}},
            }
            for path, value in expected.items():
                got = await client.get(path)
                assert got.status_code == 200, (path, got.text)
                assert got.headers["content-type"] == "application/json"
                assert got.headers["content-disposition"].startswith("attachment; filename=")
                assert json.loads(got.text) == value
            for path in (
                f"/runs/{ids['boom']}/output/explode.json",  # failed: no output
                f"/runs/{run}/output/nothing.json",
                f"/runs/{run}/output/square/9.json",
                f"/runs/{uuid.uuid4()}/input.json",
            ):
                got = await client.get(path)
                assert got.status_code == 404, path
            assert (await client.get("/runs/nope/input.json")).status_code == 400
            assert (await client.get(f"/runs/{run}/output/square/x.json")).status_code == 400


async def test_a_big_input_is_capped_on_the_page_and_whole_in_the_download(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await drain(engine, Mail)
            big = {"blob": "x" * 70_000 + "END"}
            handle = await engine.enqueue(Mail, big)
            page = await client.get(f"/runs/{handle.run_id}")
            assert page.status_code == 200
            assert "first 65,536 characters shown" in page.text
            assert "x" * 65_000 in page.text and "END" not in page.text
            got = await client.get(f"/runs/{handle.run_id}/input.json")
            assert json.loads(got.text) == big


async def test_data_from_the_database_is_escaped(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await drain(engine, Boom)
            evil = XSS_SCRIPT + XSS_ATTR
            handle = await engine.start(Boom, {"text": evil})
            await drain(engine, Boom)
            cancelled = await engine.start(Boom, {"text": "x"})
            await engine.cancel_run(cancelled.run_id, reason=evil, by=XSS_ATTR)
            for path in (f"/runs/{handle.run_id}", f"/runs/{cancelled.run_id}", "/runs", "/flows/dash_boom"):
                page = await client.get(path)
                assert page.status_code == 200, path
                assert "<script>alert" not in page.text, path
                assert "<img src=x" not in page.text, path
            page = await client.get(f"/runs/{handle.run_id}")
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text  # the error
            assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
            page = await client.get(f"/runs/{cancelled.run_id}")
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text  # the reason


async def test_cancelled_run_shows_who_and_why_and_links_its_rerun(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await drain(engine, Boom)
            handle = await engine.start(Boom, {"text": "x"})
            page = await client.get(f"/runs/{handle.run_id}")
            assert 'action="/actions/runs/cancel"' in page.text
            assert 'action="/actions/runs/retry"' not in page.text
            await engine.cancel_run(handle.run_id, reason="wrong customer", by="alice")
            page = await client.get(f"/runs/{handle.run_id}")
            assert 'status-cancelled">cancelled<' in page.text
            assert "<strong>alice</strong>: wrong customer" in page.text
            assert 'action="/actions/runs/retry"' in page.text
            assert 'action="/actions/runs/cancel"' not in page.text
            assert 'action="/actions/runs/rerun"' in page.text
            again = await engine.rerun(handle.run_id)
            page = await client.get(f"/runs/{again.run_id}")
            assert f'href="/runs/{handle.run_id}"' in page.text  # rerun of
            page = await client.get(f"/runs/{handle.run_id}")
            assert f'href="/runs/{again.run_id}"' in page.text  # its reruns


async def test_read_only_hides_run_actions(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn, read_only=True) as (engine, client):
            await drain(engine, Boom)
            handle = await engine.start(Boom, {"text": "x"})
            page = await client.get(f"/runs/{handle.run_id}")
            assert page.status_code == 200
            assert "/actions/" not in page.text


async def test_unknown_and_malformed_paths(dsn: str) -> None:
    with trio.fail_after(30):
        async with dashboard(dsn) as (_, client):
            page = await client.get("/flows/no_such_flow")
            assert page.status_code == 404 and "There is no flow" in page.text
            missing = uuid.uuid4()
            page = await client.get(f"/runs/{missing}")
            assert page.status_code == 404 and f"There is no run {missing}" in page.text
            page = await client.get("/runs/not-a-run")
            assert page.status_code == 400 and "is not a run id" in page.text


async def test_fragment_renders_only_main(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            ids = await finished_runs(engine)
            for path in ("/flows", "/jobs", "/flows/dash_squares", "/runs", f"/runs/{ids['squares']}"):
                whole = await client.get(path)
                assert whole.text.lstrip().startswith("<!doctype html>"), path
                fragment = await client.get(path + ("&" if "?" in path else "?") + "fragment=1")
                assert fragment.status_code == 200
                assert "<html" not in fragment.text and "<header" not in fragment.text, path
                assert "<h1>" in fragment.text


async def test_pages_declare_their_live_topics(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            ids = await finished_runs(engine)
            for path, topics in (
                ("/flows", "runs"),
                ("/jobs", "runs"),
                ("/runs", "runs"),
                ("/flows/dash_squares", "flow:dash_squares"),
                (f"/runs/{ids['squares']}", f"run:{ids['squares']}"),
            ):
                page = await client.get(path)
                assert f'data-topics="{topics}"' in page.text, path


async def test_flow_page_shows_step_options_and_map_kind(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await drain(engine, Squares, Boom)
            page = await client.get("/flows/dash_boom")
            row = re.search(r'<td class="mono">explode</td>(.*?)</tr>', page.text, re.S)
            assert row is not None
            cells = re.findall(r'<td class="num">(.*?)</td>', row.group(1))
            assert "30" in cells[2] and "1" in cells[0]  # timeout of the step, max_attempts of the flow
            page = await client.get("/flows/dash_squares")
            assert re.search(r'<td class="mono">square</td>\s*<td>map</td>', page.text)
            assert re.search(r'<td class="mono">total</td>\s*<td>single</td>\s*<td class="mono">square</td>', page.text)


async def test_flows_page_counts_runs_in_the_range(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            ids = await finished_runs(engine)
            await engine.pause(Squares)
            old = await engine.start(Squares, [1])
            run_sql(dsn, "UPDATE pgflow.runs SET started_at = now() - interval '3 days' WHERE run_id = $1", old.run_id)
            page = await client.get("/flows")
            row = re.search(r'href="/flows/dash_squares">dash_squares</a>(.*?)</tr>', page.text, re.S)
            assert row is not None and "paused" in row.group(1)
            nums = re.findall(r'<td class="num">(?:<a [^>]*>)?([^<]*)', row.group(1))
            assert nums[1] == "1" and nums[2] == "100.0%"  # runs, success in the last 24h
            week = await client.get("/flows?range=7d")
            row = re.search(r'href="/flows/dash_squares">dash_squares</a>(.*?)</tr>', week.text, re.S)
            assert row is not None
            nums = re.findall(r'<td class="num">(?:<a [^>]*>)?([^<]*)', row.group(1))
            assert nums[1] == "2" and nums[6] == "1"  # runs; the old one is still running
            assert ids


async def test_run_page_shows_map_progress_while_running(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await drain(engine, Squares)
            handle = await engine.start(Squares, [1, 2, 3])
            with pytest.raises(DrainLimitExceeded):
                await drain(engine, Squares, max_tasks=2)
            page = await client.get(f"/runs/{handle.run_id}")
            assert page.status_code == 200
            assert 'status-started">started<' in page.text
            assert re.search(r'<td class="num">2/3</td>', page.text)  # the steps table
            assert 'action="/actions/runs/cancel"' in page.text


def flow_row(html: str, slug: str) -> list[str]:
    """The number cells of a flow's row on the Flows or Jobs page."""
    row = re.search(rf'href="/flows/{slug}">{slug}</a>(.*?)</tr>', html, re.S)
    assert row is not None, slug
    return [c.strip() for c in re.findall(r'<td class="num">(?:<a [^>]*>)?([^<]*)', row.group(1))]


async def test_flows_success_rate_leaves_cancelled_runs_out_and_shows_them_apart(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await finished_runs(engine)  # dash_boom: one failed run
            for _ in range(3):
                handle = await engine.start(Boom, {"text": "x"})
                await engine.cancel_run(handle.run_id, reason="duplicate")
            page = await client.get("/flows")
            # steps, runs, success, failed, cancelled, avg duration, running
            assert flow_row(page.text, "dash_boom")[:5] == ["1", "4", "0.0%", "1", "3"]
            assert flow_row(page.text, "dash_squares")[:5] == ["2", "1", "100.0%", "0", "0"]


async def test_a_cancellation_row_on_a_run_that_did_not_fail_does_not_make_it_cancelled(dsn: str) -> None:
    """The rule of pgflow_trio.run_state: cancelled only when failed with a cancellation."""
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            ids = await finished_runs(engine)
            run_sql(dsn, "INSERT INTO pgflow_trio.run_cancellations (run_id) VALUES ($1)", ids["squares"])
            state = await engine.db.fetchval("SELECT pgflow_trio.run_state($1)", ids["squares"])
            assert state == "completed"
            page = await client.get(f"/runs/{ids['squares']}")
            assert 'status-completed">completed<' in page.text.split("<h2>")[0]
            listed = await client.get("/runs?status=completed")
            assert str(ids["squares"]) in run_links(listed.text)
            assert "status-cancelled" not in listed.text
            flows = await client.get("/flows")
            assert flow_row(flows.text, "dash_squares")[:5] == ["2", "1", "100.0%", "0", "0"]


async def test_json_on_the_run_page_keeps_numbers_exactly_as_stored(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await drain(engine, Mail)
            handle = await engine.enqueue(Mail, {"amount": 0})
            run_sql(
                dsn,
                """UPDATE pgflow.runs SET input = '{"amount": 12345678901234567.89, "p": 0.10, "e": 1e400}'::jsonb
                   WHERE run_id = $1""",
                handle.run_id,
            )
            page = await client.get(f"/runs/{handle.run_id}")
            assert page.status_code == 200
            assert "12345678901234567.89" in page.text and "0.10" in page.text and "1.23e" not in page.text
            assert "&#34;p&#34;: 0.10" in page.text  # pretty: one key per line


async def test_non_ascii_digits_and_huge_task_indexes_are_400(dsn: str) -> None:
    with trio.fail_after(30):
        async with dashboard(dsn) as (_, client):
            page = await client.get("/runs?limit=%C2%B2")
            assert page.status_code == 400 and "limit must be a whole number" in page.text
            run = uuid.uuid4()
            for index in ("%C2%B2", "%D9%A3", "99999999999", "1234567890"):
                got = await client.get(f"/runs/{run}/output/x/{index}.json")
                assert got.status_code == 400, (index, got.text)
                assert "a task index is a whole number" in got.text


async def test_a_date_only_until_includes_that_whole_day(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await drain(engine, Mail)
            handle = await engine.enqueue(Mail, {"n": 1})
            today = datetime.datetime.now(datetime.UTC).date()
            page = await client.get(f"/runs?from={today}&until={today}")
            assert run_links(page.text) == [str(handle.run_id)]
            yesterday = today - datetime.timedelta(days=1)
            page = await client.get(f"/runs?until={yesterday}")
            assert run_links(page.text) == []


async def test_flows_and_jobs_run_count_links_keep_the_time_range(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            await finished_runs(engine)
            old = await engine.start(Boom, {"text": "old"})
            run_sql(dsn, "UPDATE pgflow.runs SET started_at = now() - interval '3 days' WHERE run_id = $1", old.run_id)
            for path, slug in (("/flows", "dash_boom"), ("/jobs", "dash_mail")):
                page = await client.get(path + "?range=1h")
                found = re.search(rf'<a href="(/runs\?flow={slug}&amp;from=[^"]+)">1</a>', page.text)
                assert found is not None, (path, page.text)
                listed = await client.get(found.group(1).replace("&amp;", "&"))
                assert listed.status_code == 200 and len(run_links(listed.text)) == 1, path


class BigMap(Flow[list[int], int], slug="dash_bigmap"):
    """A map step whose tasks' outputs together are far beyond the page's cap."""

    @map_step
    async def blob(self, n: int) -> str:
        return f"{n:04d}" + "x" * 96

    @step
    async def count(self, blob: list[str]) -> int:
        return len(blob)


@attrs.define
class CountingConnection:
    """A connection that counts the rows its statements return."""

    con: Any
    rows: int = 0

    async def fetch(self, *args: Any) -> Any:
        found = await self.con.fetch(*args)
        self.rows += len(found)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


async def test_a_completed_map_steps_output_head_reads_only_its_first_tasks(dsn: str) -> None:
    with trio.fail_after(90):
        async with dashboard(dsn) as (engine, client):
            await drain(engine, BigMap)
            handle = await engine.start(BigMap, list(range(2000)))
            await drain(engine, BigMap)
            whole = json.dumps([f"{n:04d}" + "x" * 96 for n in range(2000)])

            async def head(con: Any) -> tuple[_dash_runs.JsonHead | None, int]:
                counting = CountingConnection(con)
                found = await _dash_runs.map_output_head(counting, run_id=handle.run_id, step_slug="blob", cap=5000)
                return found, counting.rows

            found, rows = await engine.db.run(head)
            assert found is not None and found.truncated
            assert len(found.text) == 5000 and whole.startswith(found.text)
            needed = 5000 // 100 + 1  # each task's output is 100 characters and more
            assert rows <= 2 * needed + _dash_runs.MAP_HEAD_FIRST_BATCH, "the tasks past the cap are not read"
            page = await client.get(f"/runs/{handle.run_id}")
            assert page.status_code == 200
            assert 'Output of blob <span class="muted">(first 65,536 characters shown)' in page.text
            small = await engine.start(BigMap, [1, 2])
            await drain(engine, BigMap)
            small_head = await engine.db.run(
                functools.partial(_dash_runs.map_output_head, run_id=small.run_id, step_slug="blob", cap=5000)
            )
            assert small_head is not None and not small_head.truncated
            assert json.loads(small_head.text) == [f"{n:04d}" + "x" * 96 for n in (1, 2)]


def step_view(slug: str, status: str, initial: int | None, remaining: int | None, kind: str = "map") -> StepView:
    return StepView(slug, kind, status, initial, remaining, None, None, None, None)


def test_map_progress_counts_only_tasks_that_are_done() -> None:
    marks = step_marks(
        [
            step_view("waiting", "created", 5, None),  # its task count known, none started
            step_view("unknown", "created", None, None),
            step_view("running", "started", 10, 4),
            step_view("done", "completed", 3, 0),
            step_view("empty", "completed", 0, 0),
            step_view("single", "started", 1, 1, kind="single"),
        ]
    )
    assert marks == {
        "waiting": StepMark("created", 0, 5),
        "unknown": StepMark("created", 0, None),
        "running": StepMark("started", 6, 10),
        "done": StepMark("completed", 3, 3),
        "empty": StepMark("completed", 0, 0),
        "single": StepMark("started"),
    }


T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def task(status: str, queued: float, started: float | None, finished: float | None) -> TaskAttempt:
    def at(seconds: float | None) -> datetime.datetime | None:
        return None if seconds is None else T0 + datetime.timedelta(seconds=seconds)

    queued_at = at(queued)
    assert queued_at is not None
    return TaskAttempt("s", 0, status, 1, None, None, queued_at, at(started), at(finished), None)


def test_the_task_timeline_places_waits_and_work_on_the_runs_scale() -> None:
    tasks = [
        task("completed", 0, 10, 30),  # waited 10 s, worked 20 s
        task("started", 40, 50, None),  # still running: works until the end of the scale
        task("queued", 60, None, None),  # waits until the end of the scale
        task("failed", 80, 80, 80),  # instantaneous: still a visible sliver
        task("completed", -5, 120, 130),  # outside the run's span: clamped into the box
    ]
    line = timeline(tasks, start=T0, end=T0 + datetime.timedelta(seconds=100), width=200)
    assert line.width == 200 and line.span == datetime.timedelta(seconds=100)
    first, running, queued, instant, outside = line.rows
    assert (first.wait, first.work, first.status) == (Bar(0, 20), Bar(20, 40), "completed")
    assert (running.wait, running.work) == (Bar(80, 20), Bar(100, 100))
    assert (queued.wait, queued.work) == (Bar(120, 80), None)
    assert instant.wait is None and instant.work == Bar(160, TIMELINE_MIN_BAR)
    assert outside.wait == Bar(0, 200) and outside.work is not None
    assert outside.work.x + outside.work.width <= 200
    for row in line.rows:
        for bar in (row.wait, row.work):
            assert bar is None or (bar.x >= 0 and bar.x + bar.width <= 200 and bar.width > 0)


def test_a_timeline_of_no_span_does_not_divide_by_zero() -> None:
    line = timeline([task("queued", 0, None, None)], start=T0, end=T0, width=100)
    assert line.rows[0].wait == Bar(0, TIMELINE_MIN_BAR)


async def test_the_run_page_draws_a_timeline_per_task_without_inline_styles(dsn: str) -> None:
    with trio.fail_after(60):
        async with dashboard(dsn) as (engine, client):
            ids = await finished_runs(engine)
            page = await client.get(f"/runs/{ids['squares']}")
            tasks = page.text.split('class="runs-tasks"')[1].split("</table>")[0]
            assert tasks.count('<svg class="timeline"') == 4  # three squares and the total
            assert tasks.count('class="work state-completed"') == 4
            assert "style=" not in page.text
            assert re.search(r'class="timeline-axis"[^>]*>[^<]*0[^<]*→', tasks)
