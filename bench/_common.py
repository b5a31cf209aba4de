"""Shared by the benchmarks: a fresh database with the schema, on the embedded server or a given DSN."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from pgflow_trio._store import open_database
from pgflow_trio._store._dsn import resolve_dsn
from pgflow_trio._store._schema import install


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    index = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[index]


@asynccontextmanager
async def bench_database(dsn: str | None) -> AsyncIterator[str]:
    """A new database with the complete schema (dropped afterwards); yields its DSN."""
    server = await resolve_dsn(dsn)
    name = f"pgflow_bench_{uuid.uuid4().hex[:8]}"
    async with open_database(server, max_size=1) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server)._replace(path="/" + name))
    try:
        async with open_database(url, max_size=1) as db:
            await install(db)
        yield url
    finally:
        async with open_database(server, max_size=1) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
