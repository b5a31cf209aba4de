"""Screenshots of the dashboard for the README: `python scripts/screenshots.py [--out docs/screenshots] [--dsn DSN]`.

Writes into a throwaway database on the embedded PostgreSQL (cloned from the schema's template, dropped at the end),
never into $PGFLOW_DSN; `--dsn` names another database explicitly (the schema is installed there and the demo runs
stay). It runs a few demo orders (the
`python -m pgflow_trio demo` flow, with a map step) with workers in this process, serves the dashboard and saves
`overview.png` and `run-detail.png` (a just-completed run, its map step visible) through Debian's Chromium
($PGFLOW_CHROMIUM, default /usr/bin/chromium). Run it from the repository with the dev extra installed."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import CHROMIUM, LiveServer, chromium, install_flows, on_engine, watched_page  # noqa: E402

from pgflow_trio import Engine, RunFailed, install_schema  # noqa: E402
from pgflow_trio._cli._demo import DemoOrder, _order  # noqa: E402
from pgflow_trio._store._dsn import parse_dsn, start_embedded  # noqa: E402
from pgflow_trio.testing import _fresh_database, _template  # noqa: E402

ORDERS = range(1, 9)
"""Order 7's first charge fails and is retried: the overview shows a retry too."""


async def run_orders(engine: Engine) -> uuid.UUID:
    """Start the demo orders, wait for them all; return the run with the most map tasks."""
    handles = [(len(_order(n).items), await engine.start(DemoOrder, _order(n))) for n in ORDERS]
    for _, handle in handles:
        with contextlib.suppress(RunFailed):
            await handle.result(timeout=60)
    return max(handles, key=lambda pair: pair[0])[1].run_id


def take(server: LiveServer, out: Path, run_id: uuid.UUID) -> list[Path]:
    saved = []
    with chromium(CHROMIUM) as browser, watched_page(browser, width=1280, height=800) as page:
        for name, path in (("overview", "/"), ("run-detail", f"/runs/{run_id}")):
            page.page.goto(server.url + path, wait_until="load")
            page.page.wait_for_timeout(500)  # let the live connection settle
            saved.append(page.screenshot(name, out))
            if page.errors:
                print(f"warning: console errors on {path}: {page.errors}", file=sys.stderr)
    return saved


@contextlib.contextmanager
def screenshot_database(dsn: str | None) -> Iterator[str]:
    """`dsn` with the schema installed when given; else a throwaway database on the embedded PostgreSQL, dropped
    on the way out. $PGFLOW_DSN is never used: the demo runs would land in whatever database it names."""
    if dsn:
        parse_dsn(dsn)
        trio.run(install_schema, dsn)
        yield dsn
        return
    server = start_embedded()
    yield from _fresh_database(server, _template(server))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where the PNGs go")
    parser.add_argument(
        "--dsn", help="a database to write the demo runs into (default: a throwaway one on the embedded PostgreSQL)"
    )
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        print(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set PGFLOW_CHROMIUM", file=sys.stderr)
        return 2

    logging.getLogger("pgflow_trio").setLevel(logging.CRITICAL)  # order 7's retried charge is expected
    with screenshot_database(args.dsn) as dsn:
        on_engine(dsn, lambda engine: install_flows(engine, [DemoOrder]))
        with LiveServer(dsn, served=[DemoOrder], workers=True) as server:
            run_id = server.call(run_orders)
            for path in take(server, args.out, run_id):
                print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
