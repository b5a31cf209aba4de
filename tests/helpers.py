"""Helpers for tests: plain asyncpg (outside the code under test) for administrative SQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

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
    from pgflow_trio._targets import load_object

    flow = load_object(str(ROOT / "examples" / "process_order.py") + ":ProcessOrder")
    return sys.modules[flow.__module__]
