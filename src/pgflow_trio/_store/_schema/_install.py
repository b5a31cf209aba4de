"""Install and check the database schema: pgmq, the realtime stand-in, pgflow core 0.8.1 and our own migrations.

Everything is applied in one transaction under an advisory lock, so concurrent installers are safe and a failure
leaves nothing half-written. Each piece is recorded in `pgflow_trio.migrations` and applied exactly once.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal, Protocol

import trio

from pgflow_trio._exceptions import SchemaError
from pgflow_trio._models import InstallReport, SchemaStatus
from pgflow_trio._store import Connection, Database
from pgflow_trio._store._schema._core import CORE_VERSION, SqlFile, core_migrations, obtain_core_tarball
from pgflow_trio._store._schema._pgmq import new_enough, pgmq_sql_install

LOCK_KEY = 7_301_946_210_553_118_001
INSTALL_COMMAND = "python -m pgflow_trio db install"
STAND_IN_COMMENT = "pgflow_trio stand-in"
_CREATE_PGMQ = 'CREATE EXTENSION IF NOT EXISTS "pgmq" WITH SCHEMA "pgmq";'

BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS pgflow_trio;
CREATE TABLE IF NOT EXISTS pgflow_trio.migrations (
    name text PRIMARY KEY,
    version text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""

PgmqMode = Literal["extension", "sql", "skip"]


def _package_sql(relative: str) -> str:
    return importlib.resources.files("pgflow_trio._store").joinpath("sql", relative).read_text()


def realtime_stand_in() -> SqlFile:
    return SqlFile("realtime/stand-in", _package_sql("realtime_stand_in.sql"))


def own_migrations() -> list[SqlFile]:
    """Our versioned migrations, `pgflow_trio/NNNN_name.sql`, in order."""
    folder = importlib.resources.files("pgflow_trio._store").joinpath("sql", "migrations")
    files = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [SqlFile(f"pgflow_trio/{name}", folder.joinpath(name).read_text()) for name in files]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _record_sql(name: str, version: str, checksum: str) -> str:
    return (
        "INSERT INTO pgflow_trio.migrations (name, version, checksum) VALUES "
        f"({_literal(name)}, {_literal(version)}, {_literal(checksum)}) "
        "ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, checksum = EXCLUDED.checksum, "
        "applied_at = now();"
    )


def _core_sql(migration: SqlFile, *, keep_create_extension: bool) -> str:
    if keep_create_extension or _CREATE_PGMQ not in migration.sql:
        return migration.sql
    return migration.sql.replace(_CREATE_PGMQ, "-- pgmq installed as plain SQL by pgflow_trio")


async def install(db: Database, *, core_tarball: Path | None = None) -> InstallReport:
    """Bring the database to the complete schema; safe to run again and from several processes at once."""
    tarball = await trio.to_thread.run_sync(obtain_core_tarball, core_tarball)
    core = core_migrations(tarball)
    applied: list[str] = []
    async with db.transaction() as tx:
        await tx.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await tx.execute(BOOTSTRAP)
        recorded = {
            r["name"]: r["checksum"] for r in await tx.fetch("SELECT name, checksum FROM pgflow_trio.migrations")
        }

        async def apply(name: str, version: str, checksum: str, sql: str) -> None:
            await tx.execute(sql)
            await tx.execute(_record_sql(name, version, checksum))
            applied.append(name)

        pgmq_is_extension = await _ensure_pgmq(tx, apply)
        await _ensure_stand_in(tx, recorded, apply)
        await _ensure_core(tx, core, recorded, apply, keep_create_extension=pgmq_is_extension)
        for migration in own_migrations():
            if migration.name in recorded:
                if recorded[migration.name] != migration.checksum:
                    raise SchemaError(
                        f"migration {migration.name} was applied with different content; migrations are "
                        "immutable once released: restore the file or add a new migration"
                    )
                continue
            await apply(migration.name, "1", migration.checksum, migration.sql)
    return InstallReport(tuple(applied))


async def _ensure_pgmq(tx: Connection, apply: _Apply) -> bool:
    """Install pgmq when absent; refuse one older than 1.5. Returns True when pgmq is the extension."""
    ext_version = await tx.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pgmq'")
    if ext_version is not None:
        if not new_enough(ext_version):
            raise SchemaError(
                f"pgmq {ext_version} is installed as an extension; pgflow core {CORE_VERSION} needs pgmq >= 1.5: "
                "install a newer pgmq on the server and run `ALTER EXTENSION pgmq UPDATE`, then "
                f"`{INSTALL_COMMAND}`"
            )
        return True
    if await tx.fetchval("SELECT to_regclass('pgmq.meta') IS NOT NULL"):
        if not await _pgmq_has_headers(tx):
            raise SchemaError(
                "pgmq is installed as plain SQL but is older than 1.5 (pgmq.message_record has no headers "
                f"column); pgflow core {CORE_VERSION} needs pgmq >= 1.5: upgrade that pgmq install (or drop "
                f"schema pgmq on a database without queues), then run `{INSTALL_COMMAND}`"
            )
        return False
    available = await tx.fetchval("SELECT default_version FROM pg_available_extensions WHERE name = 'pgmq'")
    if available is not None and new_enough(available):
        await apply("pgmq", str(available), "extension", 'CREATE EXTENSION IF NOT EXISTS "pgmq" WITH SCHEMA "pgmq";')
        return True
    version, script = pgmq_sql_install()
    await apply("pgmq", version, f"sql:{script.checksum}", script.sql)
    return False


async def _pgmq_has_headers(tx: Connection) -> bool:
    return bool(
        await tx.fetchval(
            """SELECT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
               JOIN pg_attribute a ON a.attrelid = t.typrelid
               WHERE n.nspname = 'pgmq' AND t.typname = 'message_record' AND a.attname = 'headers'
                 AND a.attnum > 0 AND NOT a.attisdropped)"""
        )
    )


async def _realtime_send_comment(tx: Connection) -> tuple[bool, str | None]:
    row = await tx.fetchrow(
        """SELECT obj_description(p.oid, 'pg_proc') AS comment FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'realtime' AND p.proname = 'send'"""
    )
    return (row is not None, None if row is None else row["comment"])


async def _ensure_stand_in(tx: Connection, recorded: dict[str, str], apply: _Apply) -> None:
    stand_in = realtime_stand_in()
    exists, comment = await _realtime_send_comment(tx)
    if exists and comment != STAND_IN_COMMENT:
        return  # a real realtime.send (Supabase): leave it alone
    if not exists or recorded.get(stand_in.name) != stand_in.checksum:
        await apply(stand_in.name, "1", stand_in.checksum, stand_in.sql)


async def _core_is_0_8(tx: Connection) -> bool:
    return bool(
        await tx.fetchval(
            """SELECT to_regclass('pgflow.workers') IS NOT NULL
                 AND EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'pgflow'
                             AND table_name = 'steps' AND column_name = 'step_type')
                 AND EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'pgflow'
                             AND table_name = 'workers' AND column_name = 'deprecated_at')
                 AND to_regproc('pgflow.read_with_poll') IS NULL"""
        )
    )


async def _ensure_core(
    tx: Connection,
    core: list[SqlFile],
    recorded: dict[str, str],
    apply: _Apply,
    *,
    keep_create_extension: bool,
) -> None:
    names = [f"core/{m.name}" for m in core]
    if not any(n in recorded for n in names) and await tx.fetchval("SELECT to_regnamespace('pgflow') IS NOT NULL"):
        if not await _core_is_0_8(tx):
            raise SchemaError(
                f"schema pgflow exists but is not pgflow core {CORE_VERSION} and was not installed by pgflow_trio: "
                "upgrade it with the tool that installed it, or drop schema pgflow on a database without runs"
            )
        for name in names:  # installed by another tool (e.g. Supabase migrations): adopt it
            await tx.execute(_record_sql(name, CORE_VERSION, "adopted"))
            recorded[name] = "adopted"
    for name, migration in zip(names, core, strict=True):
        if name not in recorded:
            await apply(
                name,
                CORE_VERSION,
                migration.checksum,
                _core_sql(migration, keep_create_extension=keep_create_extension),
            )


class _Apply(Protocol):
    async def __call__(self, name: str, version: str, checksum: str, sql: str) -> None: ...


def install_script(tarball: Path | None = None, *, pgmq: PgmqMode = "extension", realtime: bool = True) -> str:
    """The complete install as one SQL script, for people who apply migrations with their own tool."""
    core = core_migrations(obtain_core_tarball(tarball))
    parts = ["BEGIN;", f"SELECT pg_advisory_xact_lock({LOCK_KEY});", BOOTSTRAP.strip()]

    def add(name: str, version: str, checksum: str, sql: str) -> None:
        parts.append(f"-- {name}")
        parts.append(sql.strip())
        parts.append(_record_sql(name, version, checksum))

    if pgmq == "extension":
        add("pgmq", "extension", "extension", 'CREATE EXTENSION IF NOT EXISTS "pgmq" WITH SCHEMA "pgmq";')
    elif pgmq == "sql":
        version, script = pgmq_sql_install()
        add("pgmq", version, f"sql:{script.checksum}", script.sql)
    if realtime:
        stand_in = realtime_stand_in()
        add(stand_in.name, "1", stand_in.checksum, stand_in.sql)
    for migration in core:
        add(
            f"core/{migration.name}",
            CORE_VERSION,
            migration.checksum,
            _core_sql(migration, keep_create_extension=pgmq != "sql"),
        )
    for migration in own_migrations():
        add(migration.name, "1", migration.checksum, migration.sql)
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"


async def check(db: Database) -> SchemaStatus:
    """Inspect what is installed, without changing anything."""
    expected_own = own_migrations()
    async with db.connection() as con:
        server = await con.fetchval("SHOW server_version")
        has_table = await con.fetchval("SELECT to_regclass('pgflow_trio.migrations') IS NOT NULL")
        recorded: dict[str, tuple[str, str]] = {}
        if has_table:
            rows = await con.fetch("SELECT name, version, checksum FROM pgflow_trio.migrations")
            recorded = {r["name"]: (r["version"], r["checksum"]) for r in rows}
        ext = await con.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pgmq'")
        problems: list[str] = []
        pgmq_version: str | None
        pgmq_source: str | None
        if ext is not None:
            pgmq_version, pgmq_source = str(ext), "extension"
        elif await con.fetchval("SELECT to_regclass('pgmq.meta') IS NOT NULL"):
            pgmq_source = "sql"
            pgmq_version = (
                recorded["pgmq"][0] if "pgmq" in recorded else (">= 1.5" if await _pgmq_has_headers(con) else "< 1.5")
            )
        else:
            pgmq_version = pgmq_source = None
            problems.append("pgmq is not installed")
        if pgmq_version is not None and (
            pgmq_version == "< 1.5" or (pgmq_version[0].isdigit() and not new_enough(pgmq_version))
        ):
            problems.append(f"pgmq {pgmq_version} is too old: pgflow core {CORE_VERSION} needs >= 1.5")
        core_applied = sum(1 for name in recorded if name.startswith("core/"))
        if core_applied == 0 and await con.fetchval("SELECT to_regnamespace('pgflow') IS NOT NULL"):
            core_applied = 12 if await _core_is_0_8(con) else 0
            if core_applied == 0:
                problems.append(f"schema pgflow exists but is not pgflow core {CORE_VERSION}")
        if core_applied < 12:
            problems.append(f"pgflow core {CORE_VERSION} is not fully installed ({core_applied}/12 migrations)")
        exists, comment = await _realtime_send_comment(con)
        realtime = "missing" if not exists else ("stand-in (NOTIFY)" if comment == STAND_IN_COMMENT else "external")
        if not exists:
            problems.append("realtime.send is missing")
        own_applied = [m for m in expected_own if m.name in recorded]
        if len(own_applied) < len(expected_own):
            problems.append(f"pgflow_trio schema is at {len(own_applied)}, expected {len(expected_own)}")
        cron = await con.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
        if cron is None:
            available = await con.fetchval("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_cron'")
            cron_text = f"available ({available}), not created" if available else None
        else:
            cron_text = str(cron)
    return SchemaStatus(
        server_version=str(server),
        pgmq_version=pgmq_version,
        pgmq_source=pgmq_source,
        core_version=CORE_VERSION if core_applied == 12 else None,
        core_applied=core_applied,
        core_expected=12,
        realtime=realtime,
        schema_version=len(own_applied),
        schema_expected=len(expected_own),
        pg_cron=cron_text,
        problems=tuple(problems),
    )


async def require_complete(db: Database) -> None:
    """Raise SchemaError naming the install command unless the schema is complete."""
    status = await check(db)
    if not status.ok:
        raise SchemaError(
            "the database schema is incomplete (" + "; ".join(status.problems) + f"): run `{INSTALL_COMMAND}`"
        )
