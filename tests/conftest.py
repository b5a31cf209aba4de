"""Real PostgreSQL for every test, through the public pytest plugin `pgflow_trio.testing` (installed with the
package): one server per session (`PGFLOW_TEST_DSN` when set, else the embedded one), a template database with the
full schema, and a fresh clone of it per test. The fixtures here are our own extras and short names for those."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgflow_trio._store._schema import obtain_core_tarball
from pgflow_trio.testing import _fresh_database, _Server


@pytest.fixture(scope="session")
def server_dsn(pgflow_server_dsn: str) -> str:
    """DSN of the server (its maintenance database)."""
    return pgflow_server_dsn


@pytest.fixture(scope="session")
def template_db(pgflow_template_db: str) -> str:
    """Name of a template database holding the complete schema (rebuilt when our SQL changes)."""
    return pgflow_template_db


@pytest.fixture
def dsn(pgflow_dsn: str) -> str:
    """A fresh database with the complete schema installed."""
    return pgflow_dsn


@pytest.fixture(scope="session")
def embedded_data_dir(_pgflow_server: _Server) -> Path:
    """The data directory of the embedded test server (skips when the tests use PGFLOW_TEST_DSN)."""
    if _pgflow_server.data_dir is None:
        pytest.skip("needs the embedded server (PGFLOW_TEST_DSN is set)")
    return _pgflow_server.data_dir


@pytest.fixture(scope="session")
def core_tarball() -> Path:
    return obtain_core_tarball()


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh database with nothing installed."""
    yield from _fresh_database(server_dsn, "template0")


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
    yield from _fresh_database(cron_dsn, "template0")
