"""Browser tests of the dashboard: the real app served by Hypercorn on Trio in a background thread, driven by
Debian's Chromium through Playwright's sync API. Also used by `scripts/screenshots.py`.

Chromium comes from the system (`PGFLOW_CHROMIUM`, default /usr/bin/chromium), never from `playwright install`.
Without it the browser tests skip, unless `PGFLOW_REQUIRE_BROWSER=1` (CI), where they fail."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import pytest
import trio

from pgflow_trio import Context, Engine, Flow, Job, Schedule, WorkerOptions, map_step, open_engine, step

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Playwright

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("PGFLOW_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Without the background-networking flags Chromium keeps dialling out, and a closed network refuses it."""
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 15.0

BROWSER_WORKERS = WorkerOptions(
    heartbeat_interval=0.5,
    poll_min=0.01,
    poll_max=0.1,
    poll_seconds=1.0,
    fallback_poll=0.5,
    shutdown_grace=1.0,
)
"""Workers that pick tasks up quickly, and stop quickly when the server stops."""


# ---- flows the browser tests run ----------------------------------------------------------------------------


@attrs.frozen
class Basket:
    """`items` are priced one map task each; `load` sleeps `pause` seconds first and raises `fail` when set."""

    items: list[int]
    note: str = ""
    fail: str | None = None
    pause: float = 0.0


class Checkout(Flow[Basket, int], slug="browser_checkout", max_attempts=1):
    """load -> price (map) -> total, with `ship` beside them: a small DAG with a map step and a long edge."""

    @step
    async def load(self, basket: Basket) -> list[int]:
        await trio.sleep(basket.pause)
        if basket.fail is not None:
            raise ValueError(basket.fail)
        return basket.items

    @map_step
    async def price(self, load: int, ctx: Context) -> int:
        await trio.sleep(0.05 * (ctx.task_index % 4))
        return load * 100

    @step(timeout=30)
    async def ship(self, basket: Basket) -> str:
        return f"{len(basket.items)} items"

    @step
    async def total(self, price: list[int], load: list[int], ship: str) -> int:
        return sum(price)


class Parked(Flow[dict[str, Any], None], slug="browser_parked"):
    """Never served: its runs stay started (many runs, cheaply)."""

    @step
    async def wait(self, data: dict[str, Any]) -> None:
        return None


class Nightly(Job[dict[str, Any], None], queue="browser_nightly", cron=Schedule("0 3 * * *", input={})):
    """A job with a schedule (at 03:00: it does not fire during a test)."""

    async def perform(self, data: dict[str, Any], ctx: Context) -> None:
        return None


SERVED: tuple[type[Any], ...] = (Checkout, Nightly)
FLOWS: tuple[type[Any], ...] = (Checkout, Parked, Nightly)


# ---- the database -------------------------------------------------------------------------------------------


def on_engine(dsn: str, fn: Callable[[Engine], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run `fn(engine)` to completion in a fresh `trio.run` (for set-up and checks from sync tests).

    In a thread of its own: this thread may hold Playwright's asyncio loop, which trio_asyncio must not see."""

    async def main() -> T:
        with trio.fail_after(timeout):
            async with open_engine(dsn) as engine:
                return await fn(engine)

    with ThreadPoolExecutor(1, thread_name_prefix="on-engine") as pool:
        return pool.submit(trio.run, main).result()


async def install_flows(engine: Engine, flows: Sequence[type[Any]] = FLOWS) -> None:
    for flow in flows:
        await engine.upsert_flow(flow)


# ---- the server ---------------------------------------------------------------------------------------------


class LiveServer:
    """The dashboard on 127.0.0.1 (a free port) in a background thread running its own `trio.run`, with an engine
    on `dsn`; optionally workers serving `served`. A context manager: stops cleanly on exit."""

    def __init__(self, dsn: str, *, served: Sequence[type[Any]] = (), workers: bool = False, **app: Any) -> None:
        self.dsn = dsn
        self.served = tuple(served)
        self.app_options = app
        self.url = ""
        self._workers_at_start = workers
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._engine: Engine | None = None
        self._thread = threading.Thread(target=self._run, name="dashboard-server", daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT):
            raise TimeoutError(f"the dashboard did not start within {STARTUP_TIMEOUT} s")
        if self._error is not None:
            raise RuntimeError("the dashboard failed to start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(SHUTDOWN_TIMEOUT)
        if self._thread.is_alive():
            raise TimeoutError(f"the dashboard did not stop within {SHUTDOWN_TIMEOUT} s")
        if self._error is not None:
            raise RuntimeError("the dashboard server failed") from self._error

    def call(self, fn: Callable[[Engine], Awaitable[T]]) -> T:
        """Run `fn(engine)` in the server's Trio loop, on its engine (e.g. to start a run the page then shows)."""
        assert self._token is not None and self._engine is not None
        engine = self._engine
        return trio.from_thread.run(lambda: fn(engine), trio_token=self._token)

    def start_workers(self) -> None:
        """Start workers for the served flows in the server's loop (they stop with the server)."""
        trio.from_thread.run(self._start_workers, trio_token=self._token)

    async def _start_workers(self) -> None:
        assert self._nursery is not None and self._engine is not None
        await self._nursery.start(functools.partial(self._engine.serve, *self.served, options=BROWSER_WORKERS))

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the test's thread
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve
        from hypercorn.typing import ASGIFramework

        from pgflow_trio._dashboard._app import create_app

        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = None
        async with open_engine(self.dsn) as engine, trio.open_nursery() as nursery:
            self._engine, self._nursery = engine, nursery
            if self._workers_at_start:
                await self._start_workers()
            app = cast("ASGIFramework", create_app(engine, **self.app_options))
            binds = await nursery.start(functools.partial(serve, app, config, shutdown_trigger=self._stop.wait))
            self.url = binds[0]
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()


# ---- the browser --------------------------------------------------------------------------------------------


def require_chromium() -> str:
    """Chromium's path; skips (or fails with PGFLOW_REQUIRE_BROWSER=1) when it or Playwright is missing."""
    missing = None
    if not os.access(CHROMIUM, os.X_OK):
        missing = f"no Chromium at {CHROMIUM} (set PGFLOW_CHROMIUM, or apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "Playwright is not installed (pip install -e '.[dev]')"
    if missing is not None:
        if os.environ.get("PGFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PGFLOW_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return CHROMIUM


@contextlib.contextmanager
def chromium(executable: str = CHROMIUM) -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (no browser download).

    Playwright's sync API runs a private asyncio loop in this thread; trio_asyncio (which the engine uses) would
    hand it one of its own, so this thread gets asyncio's default policy meanwhile (trio_asyncio keeps policies per
    thread outside Trio)."""
    from playwright.sync_api import sync_playwright

    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright, executable)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        asyncio.set_event_loop_policy(None)


def launch(playwright: Playwright, executable: str = CHROMIUM) -> Browser:
    return playwright.chromium.launch(executable_path=executable, args=list(LAUNCH_ARGS), headless=True)


@attrs.define
class Watched:
    """A page with what went wrong on it: console errors, uncaught exceptions, CSP violations, dialogs opened."""

    page: Page
    errors: list[str] = attrs.Factory(list)
    dialogs: list[str] = attrs.Factory(list)

    def assert_clean(self) -> None:
        violations = self.page.evaluate("window.__cspViolations || []")
        assert not self.errors, f"console errors on {self.page.url}: {self.errors}"
        assert not violations, f"CSP violations on {self.page.url}: {violations}"
        assert not self.dialogs, f"dialogs opened on {self.page.url}: {self.dialogs}"

    def screenshot(self, name: str, directory: Path = SCREENSHOTS) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


_CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline') + ' ' + (e.sourceFile || ''));
});
"""


@contextlib.contextmanager
def watched_page(browser: Browser, *, width: int = 1400, height: int = 900) -> Iterator[Watched]:
    """A fresh browser context and page that records console errors, page errors, CSP violations and dialogs
    (dismissing them)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(5_000)
    page = context.new_page()
    watched = Watched(page)
    page.add_init_script(_CSP_LISTENER)

    def on_console(message: ConsoleMessage) -> None:
        # Chromium asks for /favicon.ico on its own; its 404 is no error of the page.
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            watched.errors.append(f"{message.text} ({message.location.get('url', '')})")

    def on_dialog(dialog: Dialog) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))
    page.on("dialog", on_dialog)
    try:
        yield watched
    finally:
        context.close()


# ---- fixtures (imported by the browser test module) ---------------------------------------------------------


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Browser]:
    """Chromium for one test module (skips without it, see `require_chromium`). Not longer: while it is open this
    thread runs with asyncio's default loop policy, which trio-asyncio tests after it must not inherit."""
    with chromium(require_chromium()) as launched:
        yield launched


@pytest.fixture(name="watched")
def watched_fixture(browser: Browser) -> Iterator[Watched]:
    """A fresh page for the test, watched for errors (`Watched`)."""
    with watched_page(browser) as page:
        yield page
