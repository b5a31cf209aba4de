"""Library entry points for schema administration (what `python -m pgflow_trio db ...` calls)."""

from __future__ import annotations

from pathlib import Path

from pgflow_trio._models import InstallReport, SchemaStatus
from pgflow_trio._store import open_database
from pgflow_trio._store._dsn import resolve_dsn
from pgflow_trio._store._schema import check, install
from pgflow_trio._util import unwrap_single_errors


async def install_schema(
    dsn: str | None = None,
    *,
    core_tarball: Path | None = None,
    data_dir: Path | None = None,
    connect_timeout: float | None = None,
) -> InstallReport:
    """Install or complete the schema (pgmq, pgflow core 0.8.1, realtime stand-in, pgflow_trio). Idempotent."""
    async with unwrap_single_errors():
        resolved = await resolve_dsn(dsn, data_dir=data_dir)
        async with open_database(resolved, min_size=1, max_size=2, connect_timeout=connect_timeout) as db:
            return await install(db, core_tarball=core_tarball)


async def check_schema(
    dsn: str | None = None, *, data_dir: Path | None = None, connect_timeout: float | None = None
) -> SchemaStatus:
    """Report what is installed; `status.ok` is False (with `status.problems`) when something is missing."""
    async with unwrap_single_errors():
        resolved = await resolve_dsn(dsn, data_dir=data_dir)
        async with open_database(resolved, min_size=1, max_size=2, connect_timeout=connect_timeout) as db:
            return await check(db)
