"""The dashboard in a real browser (Chromium through Playwright): every page renders with data and without console
errors or CSP violations, live step colours, filters and pagination, an action end to end, and hostile data shown
as text. One server and database for the module (its tests only add runs of their own); screenshots of every page
go to tests/artifacts/screenshots/."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs
import pytest

from pgflow_trio import Engine, RunFailed, RunHandle
from pgflow_trio.testing import _database_dsn, _fresh_database
from tests.browser import (
    ROOT,
    SERVED,
    Basket,
    Checkout,
    LiveServer,
    Watched,
    browser_fixture,  # noqa: F401  (the fixture `browser`)
    install_flows,
    on_engine,
    watched_fixture,  # noqa: F401  (the fixture `watched`)
)
from tests.helpers import run_sql

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PARKED_RUNS = 130
"""More runs than one page of the Runs list shows."""


@attrs.frozen
class Data:
    server: LiveServer
    completed: uuid.UUID
    failed: uuid.UUID
    hostile: uuid.UUID


async def finished(handle: RunHandle[int]) -> None:
    with contextlib.suppress(RunFailed):
        await handle.result(timeout=30)


async def populate(engine: Engine) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A completed run, a failed one, one carrying hostile text, and many parked (started) runs."""
    completed = await engine.start(Checkout, Basket([1, 2, 3], note="three items"))
    failed = await engine.start(Checkout, Basket([4], fail="the warehouse is closed"))
    hostile = await engine.start(Checkout, Basket([5], note=SCRIPT + IMG, fail=f"{SCRIPT} {IMG}"))
    for handle in (completed, failed, hostile):
        await finished(handle)
    return completed.run_id, failed.run_id, hostile.run_id


@pytest.fixture(scope="module")
def data(browser: Browser, pgflow_server_dsn: str, pgflow_template_db: str) -> Iterator[Data]:
    """Chromium first (its Playwright loop starts before any engine), then the database and the server."""
    for dsn in _fresh_database(pgflow_server_dsn, pgflow_template_db):
        on_engine(dsn, install_flows)
        run_sql(dsn, "SELECT pgflow.start_flow('browser_parked', '{}'::jsonb) FROM generate_series(1, $1)", PARKED_RUNS)
        with LiveServer(dsn, served=SERVED, workers=True) as server:
            completed, failed, hostile = server.call(populate)
            yield Data(server, completed, failed, hostile)


def visit(page: Watched, data: Data, path: str) -> None:
    """Open `path`, check it answered 200 and rendered its <main>."""
    response = page.page.goto(data.server.url + path, wait_until="load")
    assert response is not None and response.status == 200, f"{path}: {response and response.status}"
    assert page.page.locator("main#main").count() == 1


def main_text(page: Watched) -> str:
    """The text of <main> as the DOM holds it (collapsed <details> included)."""
    return page.page.text_content("main") or ""


PAGES = {
    "overview": ("/", ["Live workers", "130", "browser_parked"]),
    "flows": ("/flows", ["browser_checkout", "browser_parked"]),
    "flow-detail": ("/flows/browser_checkout", ["load", "price", "total"]),
    "jobs": ("/jobs", ["browser_nightly"]),
    "runs": ("/runs", ["browser_checkout", "completed", "failed"]),
    "run-detail": ("/runs/{completed}", ["browser_checkout", "completed", "three items"]),
    "workers": ("/workers", ["browser_checkout"]),
    "queues": ("/queues", ["browser_checkout", "browser_parked"]),
    "schedules": ("/schedules", ["browser_nightly", "0 3 * * *"]),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_renders_with_data_and_without_console_errors_or_csp_violations(
    data: Data, watched: Watched, name: str
) -> None:
    path, expected = PAGES[name]
    visit(watched, data, path.format(completed=data.completed))
    watched.screenshot(name)
    watched.assert_clean()
    text = main_text(watched)
    missing = [item for item in expected if item not in text]
    assert not missing, f"{name} ({path}) does not show {missing}"


@pytest.mark.parametrize("path", ["/flows/browser_checkout", "/runs/{completed}"])
def test_the_dag_is_drawn_on_flow_and_run_detail(data: Data, watched: Watched, path: str) -> None:
    visit(watched, data, path.format(completed=data.completed))
    page = watched.page
    nodes = page.locator("svg.dag g.node")
    assert sorted(nodes.evaluate_all("gs => gs.map(g => g.dataset.step)")) == ["load", "price", "ship", "total"]
    assert "map" in (page.get_attribute('svg.dag g.node[data-step="price"]', "class") or "")
    assert page.locator("svg.dag path.edge").count() == 4
    box = page.locator('svg.dag g.node[data-step="load"]').bounding_box()
    assert box is not None and box["width"] > 40, "the DAG is laid out and visible"
    assert "timeout: 30" in (page.text_content('svg.dag g.node[data-step="ship"] title') or ""), "its own options"
    if path.startswith("/runs"):
        for slug in ("load", "price", "ship", "total"):
            assert "state-completed" in (page.get_attribute(f'svg.dag g.node[data-step="{slug}"]', "class") or "")
        assert "3/3" in (page.text_content('svg.dag g.node[data-step="price"]') or "")
        bars = page.locator("table.runs-tasks svg.timeline rect.work.state-completed")
        assert bars.count() == page.locator("table.runs-tasks tbody tr").count() == 6, "a timeline bar per task"
        widths = bars.evaluate_all("rs => rs.map(r => r.getBoundingClientRect().width)")
        assert all(w > 0 for w in widths), widths
    watched.assert_clean()


def test_a_run_changes_step_colours_live_without_a_reload(data: Data, watched: Watched) -> None:
    from playwright.sync_api import expect

    async def start(engine: Engine) -> uuid.UUID:
        return (await engine.start(Checkout, Basket([1, 2, 3, 4], pause=2.5))).run_id

    run_id = data.server.call(start)
    visit(watched, data, f"/runs/{run_id}")
    page = watched.page
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "on", timeout=5_000)
    expect(page.locator('svg.dag g.node[data-step="load"]')).to_have_class(re.compile(r"\bstate-started\b"))
    expect(page.locator('svg.dag g.node[data-step="total"]')).not_to_have_class(re.compile(r"\bstate-completed\b"))
    expect(page.locator('svg.dag g.node[data-step="total"]')).to_have_class(
        re.compile(r"\bstate-completed\b"), timeout=15_000
    )
    expect(page.locator('svg.dag g.node[data-step="price"]')).to_contain_text("4/4")
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded instead of updated live"
    watched.screenshot("run-detail-live")
    watched.assert_clean()


def test_the_runs_page_filters_by_status_and_pages_with_a_cursor(data: Data, watched: Watched) -> None:
    page = watched.page
    visit(watched, data, "/runs")
    page.select_option("form.filters select[name=status]", "failed")
    submit = page.locator("form.filters button[type=submit], form.filters input[type=submit]")
    if submit.count():
        submit.first.click()
    page.wait_for_url(re.compile(r"[?&]status=failed"))
    statuses = page.locator("main table .status").all_inner_texts()
    assert set(statuses) == {"failed"}, f"status=failed lists failed runs only (cancelled is its own state): {statuses}"
    assert str(data.failed) in page.content() or str(data.failed)[:8] in main_text(watched)

    visit(watched, data, "/runs")
    first = run_links(watched)
    assert first, "the Runs page links to its runs"
    page.get_by_role("link", name=re.compile(r"next|older|more", re.IGNORECASE)).first.click()
    page.wait_for_load_state("load")
    second = run_links(watched)
    assert second and not set(first) & set(second), "the next page shows other runs"
    assert re.search(r"[?&](older|newer)=", page.url), page.url
    watched.assert_clean()


def run_links(page: Watched) -> list[str]:
    hrefs: list[str] = page.page.locator("main a[href*='/runs/']").evaluate_all("as => as.map(a => a.href)")
    return sorted({h for h in hrefs if re.search(r"/runs/[0-9a-f-]{36}$", h)})


def test_cancelling_a_run_from_run_detail_works_and_a_post_without_csrf_token_is_refused(
    data: Data, watched: Watched
) -> None:
    from playwright.sync_api import expect

    async def start_two(engine: Engine) -> tuple[uuid.UUID, uuid.UUID]:
        one = await engine.start(Checkout, Basket([1], pause=60))
        two = await engine.start(Checkout, Basket([2], pause=60))
        return one.run_id, two.run_id

    target, bystander = data.server.call(start_two)

    async def state(engine: Engine, run_id: uuid.UUID) -> str:
        return (await engine.get_run(run_id)).state

    page = watched.page
    visit(watched, data, f"/runs/{target}")
    page.locator("main form.action[action$='/actions/runs/cancel'] button").click()
    page.wait_for_url(re.compile(r"/actions/runs/cancel$"))
    confirm = page.locator("main form.confirm-form")
    assert confirm.count() == 1, "the Cancel button asks for a confirmation first"
    assert confirm.locator("input[name=run_id]").get_attribute("value") == str(target), "for this run"
    assert confirm.locator("input[name=confirmed]").get_attribute("value") == "1"
    assert data.server.call(lambda engine: state(engine, target)) == "started", "nothing happens before confirming"
    confirm.locator("button[type=submit]").click()
    page.wait_for_load_state("load")

    assert data.server.call(lambda engine: state(engine, target)) == "cancelled"
    visit(watched, data, f"/runs/{target}")
    expect(page.locator("main .status-cancelled").first).to_be_visible()

    response = page.request.post(
        data.server.url + "/actions/runs/cancel", form={"run_id": str(bystander)}, max_redirects=0
    )
    assert response.status == 403, f"a POST without the CSRF token answered {response.status}"
    assert data.server.call(lambda engine: state(engine, bystander)) == "started"
    data.server.call(lambda engine: engine.cancel_run(bystander))
    watched.assert_clean()


def test_hostile_input_and_errors_are_shown_as_text_and_never_run(data: Data, watched: Watched) -> None:
    visit(watched, data, f"/runs/{data.hostile}")
    page = watched.page
    page.wait_for_timeout(300)  # give any injected handler its chance to fire
    text = main_text(watched)
    assert SCRIPT in text, "the hostile input, as text"
    assert IMG in text, "the error, as text"
    assert page.locator("main img").count() == 0
    assert page.locator("main script").count() == 0
    assert watched.dialogs == []
    watched.assert_clean()


def test_the_harness_catches_console_errors_csp_violations_and_dialogs(watched: Watched) -> None:
    """What every page test relies on: a broken page is noticed."""
    page = watched.page
    csp = "default-src 'self'; script-src 'unsafe-inline'"
    page.route(
        "http://harness.test/",
        lambda route: route.fulfill(
            status=200,
            headers={"Content-Type": "text/html", "Content-Security-Policy": csp},
            body='<p style="color: red">x</p><script>console.error("broken"); alert(1);</script>',
        ),
    )
    page.goto("http://harness.test/")
    page.wait_for_function("window.__cspViolations.length > 0")
    with pytest.raises(AssertionError, match="broken"):
        watched.assert_clean()
    assert watched.dialogs == ["alert: 1"]
    assert "style-src" in page.evaluate("window.__cspViolations[0]")


def test_screenshots_never_write_into_pgflow_dsn(
    monkeypatch: pytest.MonkeyPatch, pgflow_server_dsn: str, pgflow_template_db: str
) -> None:
    """Without --dsn the screenshots go to a throwaway database on the embedded server, dropped afterwards."""
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts" / "screenshots.py")
    assert spec is not None and spec.loader is not None
    screenshots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshots)
    monkeypatch.setenv("PGFLOW_DSN", _database_dsn(pgflow_server_dsn, "production"))
    monkeypatch.setattr(screenshots, "start_embedded", lambda: pgflow_server_dsn)
    with screenshots.screenshot_database(None) as dsn:
        name = urlsplit(dsn).path.lstrip("/")
        assert name != "production" and name.startswith("pgflow_test_")
        assert run_sql(dsn, "SELECT count(*) FROM pgflow.flows")[0][0] == 0, "a database with the schema"
    assert run_sql(pgflow_server_dsn, "SELECT count(*) FROM pg_database WHERE datname = $1", name)[0][0] == 0
