"""Whole databases on a server, for test sessions: create one (from a template), mark it a template, rename it,
drop it, ask whether it is a template. Each call runs synchronously on a short-lived plain connection to the
server's maintenance database (`server_dsn`), in its own asyncio loop in a thread, so it also works while a Trio
loop runs in the calling thread. Database names are quoted as identifiers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import asyncpg

_T = TypeVar("_T")


def _admin(server_dsn: str, work: Callable[[asyncpg.Connection[asyncpg.Record]], Awaitable[_T]]) -> _T:
    async def go() -> _T:
        con = await asyncpg.connect(server_dsn)
        try:
            return await work(con)
        finally:
            await con.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()


def _execute(server_dsn: str, sql: str) -> None:
    async def work(con: asyncpg.Connection[asyncpg.Record]) -> None:
        await con.execute(sql)

    _admin(server_dsn, work)


def _quoted(name: str) -> str:
    """`name` as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def is_template(server_dsn: str, name: str) -> bool | None:
    """Whether database `name` is a template (None: there is no such database)."""

    async def work(con: asyncpg.Connection[asyncpg.Record]) -> bool | None:
        found: bool | None = await con.fetchval("SELECT datistemplate FROM pg_database WHERE datname = $1", name)
        return found

    return _admin(server_dsn, work)


def create_database(server_dsn: str, name: str, *, template: str) -> None:
    """Create database `name` as a copy of database `template`."""
    _execute(server_dsn, f"CREATE DATABASE {_quoted(name)} TEMPLATE {_quoted(template)}")


def mark_template(server_dsn: str, name: str) -> None:
    """Make database `name` a template (others may be created from it while nobody is connected to it)."""
    _execute(server_dsn, f"ALTER DATABASE {_quoted(name)} IS_TEMPLATE true")


def rename_database(server_dsn: str, name: str, new_name: str) -> bool:
    """Rename database `name` to `new_name`; False (nothing done) when a database `new_name` already exists."""
    try:
        _execute(server_dsn, f"ALTER DATABASE {_quoted(name)} RENAME TO {_quoted(new_name)}")
    except asyncpg.DuplicateDatabaseError:
        return False
    return True


def drop_database(server_dsn: str, name: str) -> None:
    """Drop database `name` if it exists (a template too), disconnecting whoever is still connected."""

    async def work(con: asyncpg.Connection[asyncpg.Record]) -> None:
        if await con.fetchval("SELECT datistemplate FROM pg_database WHERE datname = $1", name):
            await con.execute(f"ALTER DATABASE {_quoted(name)} IS_TEMPLATE false")
        await con.execute(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")

    _admin(server_dsn, work)
