"""Dashboard actions end to end against real PostgreSQL: each POST first renders a confirmation page (nothing
happens), then with confirmed=1 makes the engine call and redirects with a notice; refusals are readable pages."""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from pgflow_trio import Engine, Flow, Schedule, open_engine, step
from pgflow_trio._dashboard import create_app
from pgflow_trio._dashboard._actions import _status_of
from pgflow_trio._dashboard._security import CSRF_COOKIE
from pgflow_trio._definitions._flow import definition_of
from pgflow_trio._exceptions import DatabaseError
from pgflow_trio._runtime._cron import sync_schedules

from .helpers import run_sql


@attrs.frozen
class Note:
    text: str


class Waits(Flow[Note, str], slug="dash_waits", max_attempts=1):
    """No worker serves it in these tests: its runs stay started until acted on."""

    @step
    async def only(self, note: Note) -> str:
        return note.text


class Nightly(Flow[Note, str], slug="dash_nightly", cron=Schedule("0 3 * * *", input=Note("night"))):
    @step
    async def only(self, note: Note) -> str:
        return note.text


@attrs.define
class Browser:
    engine: Engine
    client: httpx.AsyncClient
    csrf: str

    async def post(self, verb: str, **fields: Any) -> httpx.Response:
        return await self.client.post(f"/actions/{verb}", data={"csrf_token": self.csrf, **fields})

    async def confirm_then_do(self, verb: str, **fields: Any) -> httpx.Response:
        """Post the action, check the confirmation page, then post what its Confirm button posts."""
        page = await self.post(verb, **fields)
        assert page.status_code == 200, page.text
        assert 'name="confirmed" value="1"' in page.text
        assert f'action="/actions/{verb}"' in page.text
        assert f'value="{self.csrf}"' in page.text
        assert ">Back</a>" in page.text
        posted = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', page.text))
        done = await self.client.post(f"/actions/{verb}", data=posted)
        assert done.status_code == 303, done.text
        return done


@asynccontextmanager
async def browser(dsn: str) -> AsyncIterator[Browser]:
    async with open_engine(dsn) as engine:
        app = create_app(engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            await client.get("/")
            csrf = app.state.dashboard.security.token_for(client.cookies[CSRF_COOKIE])
            await engine.upsert_flow(Waits)
            yield Browser(engine, client, csrf)


def notice_of(response: httpx.Response) -> tuple[str, str]:
    location = urllib.parse.urlsplit(response.headers["location"])
    return location.path, urllib.parse.parse_qs(location.query)["notice"][0]


async def test_cancel_retry_and_rerun_a_run(dsn: str) -> None:
    with trio.fail_after(60):
        async with browser(dsn) as b:
            run_id = (await b.engine.start(Waits, Note("x"))).run_id

            page = await b.post("runs/cancel", run_id=str(run_id))
            assert "Cancel run" in page.text and "dash_waits" in page.text
            assert (await b.engine.get_run(run_id)).state == "started"  # nothing happened yet

            done = await b.confirm_then_do("runs/cancel", run_id=str(run_id))
            assert notice_of(done) == (f"/runs/{run_id}", f"Run {run_id} cancelled.")
            assert (await b.engine.get_run(run_id)).state == "cancelled"
            shown = await b.client.get(done.headers["location"])
            assert f"Run {run_id} cancelled." in shown.text

            again = await b.post("runs/cancel", run_id=str(run_id), confirmed="1")
            assert again.status_code == 409
            assert "cancelled" in again.text

            done = await b.confirm_then_do("runs/retry", run_id=str(run_id))
            assert notice_of(done)[1].startswith(f"Run {run_id} retried")
            assert (await b.engine.get_run(run_id)).state == "started"

            done = await b.confirm_then_do("runs/rerun", run_id=str(run_id))
            path, notice = notice_of(done)
            new_id = uuid.UUID(path.removeprefix("/runs/"))
            assert notice == f"Run {new_id} started, a rerun of {run_id}."
            assert (await b.engine.get_run(new_id)).rerun_of == run_id


async def test_refusals_are_readable_pages(dsn: str) -> None:
    with trio.fail_after(60):
        async with browser(dsn) as b:
            missing = await b.post("runs/cancel", run_id=str(uuid.uuid4()))
            assert missing.status_code == 404
            assert "Not done" in missing.text
            malformed = await b.post("runs/retry", run_id="<script>")
            assert malformed.status_code == 400
            assert "<script>" not in malformed.text and "run_id must be" in malformed.text
            started = (await b.engine.start(Waits, Note("x"))).run_id
            not_retryable = await b.post("runs/retry", run_id=str(started), confirmed="1")
            assert not_retryable.status_code == 409
            assert (await b.post("queues/pause", flow="no_such_flow", confirmed="1")).status_code == 404
            assert (await b.post("schedules/pause", name="no_such_schedule", confirmed="1")).status_code == 404
            assert (await b.post("runs/prune", older_than="soon")).status_code == 400
            assert (await b.post("runs/prune", older_than="7d", status="maybe")).status_code == 400
            assert (await b.client.get("/actions/runs/cancel")).status_code == 405


async def test_pause_and_resume_a_queue(dsn: str) -> None:
    with trio.fail_after(60):
        async with browser(dsn) as b:
            page = await b.post("queues/pause", flow="dash_waits", reason="maintenance")
            assert "Pause the queue of dash_waits" in page.text
            assert 'name="reason" value="maintenance"' in page.text
            done = await b.confirm_then_do("queues/pause", flow="dash_waits", reason="maintenance")
            assert notice_of(done) == ("/queues", "Queue dash_waits paused.")
            paused = run_sql(dsn, "SELECT reason FROM pgflow_trio.queue_pauses WHERE queue = 'dash_waits'")
            assert paused == [("maintenance",)]
            done = await b.confirm_then_do("queues/resume", flow="dash_waits")
            assert notice_of(done) == ("/queues", "Queue dash_waits resumed.")
            assert run_sql(dsn, "SELECT 1 FROM pgflow_trio.queue_pauses WHERE queue = 'dash_waits'") == []


async def test_pause_and_resume_a_schedule(dsn: str) -> None:
    with trio.fail_after(60):
        async with browser(dsn) as b:
            await b.engine.upsert_flow(Nightly)
            await sync_schedules(b.engine.db, [definition_of(Nightly)], backend="builtin")
            done = await b.confirm_then_do("schedules/pause", name="dash_nightly")
            assert notice_of(done) == ("/schedules", "Schedule dash_nightly paused.")
            assert run_sql(dsn, "SELECT paused_at IS NOT NULL FROM pgflow_trio.schedules") == [(True,)]
            done = await b.confirm_then_do("schedules/resume", name="dash_nightly")
            assert notice_of(done) == ("/schedules", "Schedule dash_nightly resumed.")
            assert run_sql(dsn, "SELECT paused_at IS NULL FROM pgflow_trio.schedules") == [(True,)]


async def test_prune_shows_the_dry_run_count_first(dsn: str) -> None:
    with trio.fail_after(60):
        async with browser(dsn) as b:
            old, recent = (
                (await b.engine.start(Waits, Note("old"))).run_id,
                (await b.engine.start(Waits, Note("new"))).run_id,
            )
            for run_id in (old, recent):
                await b.engine.cancel_run(run_id)
            run_sql(
                dsn,
                "UPDATE pgflow.runs SET started_at = now() - interval '9 days', failed_at = now() - interval '8 days' "
                f"WHERE run_id = '{old}'",
            )

            page = await b.post("runs/prune", older_than="7d", status="failed", flow="dash_waits")
            assert "1 run(s) that finished before" in page.text
            assert "Delete 1 run(s)" in page.text
            assert len(run_sql(dsn, "SELECT 1 FROM pgflow.runs")) == 2  # a dry run

            done = await b.confirm_then_do("runs/prune", older_than="7d", status="failed", flow="dash_waits")
            assert notice_of(done)[0] == "/runs"
            assert notice_of(done)[1].startswith("Pruned 1 run(s)")
            assert run_sql(dsn, "SELECT run_id FROM pgflow.runs") == [(recent,)]


async def test_malformed_fields_are_refused_as_400_never_500(dsn: str) -> None:
    with trio.fail_after(60):
        async with browser(dsn) as b:
            for confirmed in ("", "1"):
                for older_than in ("999999d", "99999999999d", "1e400", "-5d", "101y"):
                    refused = await b.post("runs/prune", older_than=older_than, confirmed=confirmed)
                    assert refused.status_code == 400, (older_than, refused.text)
                    assert "older_than" in refused.text
                for verb, fields in (
                    ("queues/pause", {"flow": "dash\x00waits"}),
                    ("schedules/pause", {"name": "a\x00b"}),
                    ("runs/cancel", {"run_id": str(uuid.uuid4()), "reason": "x\x00y"}),
                    ("runs/prune", {"older_than": "7d", "flow": "dash_waits\x01"}),
                ):
                    refused = await b.post(verb, confirmed=confirmed, **fields)
                    assert refused.status_code == 400, (verb, refused.text)
                    assert "control characters" in refused.text
            assert (await b.post("runs/prune", older_than="36500d")).status_code == 200  # 100 years: the limit


async def test_an_unknown_queue_or_schedule_is_refused_at_the_confirmation_step(dsn: str) -> None:
    with trio.fail_after(60):
        async with browser(dsn) as b:
            for verb, fields in (
                ("queues/pause", {"flow": "no_such_flow"}),
                ("queues/resume", {"flow": "no_such_flow"}),
                ("queues/pause", {"flow": "Bad-Slug!"}),
                ("schedules/pause", {"name": "no_such_schedule"}),
                ("schedules/resume", {"name": "no_such_schedule"}),
            ):
                refused = await b.post(verb, **fields)
                assert refused.status_code == 404, (verb, refused.text)
                assert 'name="confirmed"' not in refused.text


def test_data_errors_of_the_database_are_bad_requests() -> None:
    assert _status_of(DatabaseError("date out of range", "22008")) == 400
    assert _status_of(DatabaseError("invalid byte sequence", "22021")) == 400
    assert _status_of(DatabaseError("deadlock detected", "40P01")) is None  # a server problem stays a 500


async def test_pages_answering_a_post_are_static_and_notices_are_signed(dsn: str) -> None:
    with trio.fail_after(60):
        async with browser(dsn) as b:
            run_id = (await b.engine.start(Waits, Note("x"))).run_id
            confirm = await b.post("runs/cancel", run_id=str(run_id))
            assert 'data-topics=""' in confirm.text and 'data-refresh=""' in confirm.text
            refused = await b.post("runs/cancel", run_id=str(uuid.uuid4()), confirmed="1")
            assert 'data-topics=""' in refused.text
            done = await b.confirm_then_do("runs/cancel", run_id=str(run_id))
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(done.headers["location"]).query)
            assert set(query) == {"notice", "notice_sig"}
            shown = await b.client.get(done.headers["location"])
            assert f"Run {run_id} cancelled." in shown.text
            assert 'data-topics=""' not in shown.text  # the run page itself stays live
