"""Helpers for tests: plain asyncpg (outside the code under test) for administrative SQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import trio

from pgflow_trio import WorkerOptions
from pgflow_trio._store import Database

ROOT = Path(__file__).resolve().parent.parent


def dsn_for(server_dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(server_dsn)
    return urlunsplit(parts._replace(path="/" + database))


def run_sql(dsn: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Run one statement synchronously on a short-lived connection; return its rows as tuples.

    It runs its own asyncio loop in a worker thread, so it also works from inside a Trio test."""

    async def go() -> list[tuple[Any, ...]]:
        con = await asyncpg.connect(dsn)
        try:
            if args or sql.lstrip().upper().startswith(("SELECT", "WITH", "SHOW")):
                return [tuple(r) for r in await con.fetch(sql, *args)]
            await con.execute(sql)
            return []
        finally:
            await con.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m pgflow_trio ARGS` in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "pgflow_trio", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        cwd=ROOT,
    )


def load_example() -> ModuleType:
    """examples/process_order.py, imported the way the CLI imports a file target."""
    from pgflow_trio._cli._targets import load_object

    flow = load_object(str(ROOT / "examples" / "process_order.py") + ":ProcessOrder")
    return sys.modules[flow.__module__]


FAST = WorkerOptions(
    heartbeat_interval=0.2,
    stale_after=1.0,
    recovery_interval=0.3,
    poll_min=0.01,
    poll_max=0.05,
    poll_seconds=1.0,
    fallback_poll=0.5,
    shutdown_grace=2.0,
    extend_margin=1.0,
)


async def start_run(db: Database, slug: str, value: Any) -> uuid.UUID:
    run_id: uuid.UUID = await db.fetchval(
        "SELECT run_id FROM pgflow.start_flow($1, $2::jsonb)", slug, json.dumps(value)
    )
    return run_id


async def wait_run(db: Database, run_id: uuid.UUID) -> tuple[str, Any]:
    """Wait until the run is completed or failed; returns (status, output). Callers bound it with fail_after."""
    sql = "SELECT status, output::text AS output FROM pgflow.runs WHERE run_id = $1 AND status <> 'started'"
    await eventually(lambda: db.fetchrow(sql, run_id), 0.05)
    row = await db.fetchrow(sql, run_id)
    assert row is not None
    return row["status"], json.loads(row["output"]) if row["output"] is not None else None


async def eventually(check: Callable[[], Awaitable[object]], interval: float = 0.02) -> None:
    """Poll `check` until it returns something true (for state with no event to wait on; bound it by fail_after)."""
    while True:
        if await check():
            return
        await trio.sleep(interval)


async def file_exists(path: Path) -> bool:
    return await trio.Path(path).exists()


async def wait_for_worker(db: Database, queue: str) -> None:
    """Wait until a worker serving `queue` has registered (its flow exists by then)."""
    await eventually(
        lambda: db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pgflow.workers WHERE queue_name = $1 AND deprecated_at IS NULL)", queue
        )
    )
