"""The Trio database layer against a real PostgreSQL: cancellation, transactions, LISTEN, error mapping."""

from __future__ import annotations

import json

import asyncpg
import pytest
import trio

from pgflow_trio import ConnectionLost, DatabaseError, PgflowError
from pgflow_trio._store import MissedNotifications, Notification, open_database, open_listener
from pgflow_trio._store._errors import translate

from .helpers import run_sql


async def _wait_until_no_active(db_dsn: str, pattern: str) -> None:
    async with open_database(db_dsn, max_size=1) as admin:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()"
        )
        while True:  # polls the server's view; there is no event to wait on
            if not await admin.fetchval(query, pattern):
                return
            await trio.sleep(0.05)


async def test_cancelling_a_scope_stops_the_query_on_the_server(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1) as db:
            with trio.move_on_after(0.3) as scope:
                await db.fetchval("SELECT pg_sleep(60) /* cancel-me */")
            assert scope.cancelled_caught
            await _wait_until_no_active(dsn, "%cancel-me%")
            # the single pooled connection is still usable
            assert await db.fetchval("SELECT 41 + 1") == 42


async def test_rollback_under_cancellation_leaves_the_connection_usable(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1) as db:
            await db.execute("CREATE TABLE t (x int)")
            with trio.move_on_after(0.3):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO t VALUES (1)")
                    await tx.fetchval("SELECT pg_sleep(60)")
            assert await db.fetchval("SELECT count(*) FROM t") == 0
            assert await db.fetchval("SELECT current_setting('transaction_isolation') IS NOT NULL")
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (2)")
            assert await db.fetchval("SELECT array_agg(x) FROM t") == [2]


async def test_transaction_rolls_back_on_error_and_commits_otherwise(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1) as db:
            await db.execute("CREATE TABLE t (x int)")
            with pytest.raises(RuntimeError):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO t VALUES (1)")
                    raise RuntimeError("boom")
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (2)")
            assert await db.fetchval("SELECT array_agg(x) FROM t") == [2]


@pytest.mark.parametrize(
    ("sql", "sqlstate", "driver_error"),
    [
        ("SELECT 1/0", "22012", asyncpg.DivisionByZeroError),
        ("SELEKT 1", "42601", asyncpg.PostgresSyntaxError),
        ("SELECT * FROM no_such_table", "42P01", asyncpg.UndefinedTableError),
    ],
)
async def test_errors_keep_sqlstate_and_cause(dsn: str, sql: str, sqlstate: str, driver_error: type) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1) as db:
            with pytest.raises(DatabaseError) as info:
                await db.execute(sql)
            assert info.value.sqlstate == sqlstate
            assert isinstance(info.value.__cause__, driver_error)
            assert sqlstate in str(info.value)
            assert await db.fetchval("SELECT 1") == 1


async def test_unique_violation_inside_a_transaction(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1) as db:
            await db.execute("CREATE TABLE u (x int PRIMARY KEY); INSERT INTO u VALUES (1)")
            with pytest.raises(DatabaseError) as info:
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO u VALUES (1)")
            assert info.value.sqlstate == "23505"


async def test_unreachable_server_is_connection_lost(tmp_path: object) -> None:
    with trio.fail_after(30), pytest.raises(ConnectionLost):
        async with open_database("postgresql://nobody@/postgres?host=/nonexistent-socket-dir&port=1"):
            pass


async def test_errors_from_the_body_come_out_unwrapped(dsn: str) -> None:
    with trio.fail_after(30), pytest.raises(KeyError):
        async with open_database(dsn, max_size=1):
            raise KeyError("plain")


async def test_listen_delivers_notifications_and_survives_termination(dsn: str) -> None:
    with trio.fail_after(60):
        async with open_database(dsn, max_size=2) as db, open_listener(db, ["chan one"], health_interval=0.5) as ln:
            await db.execute("SELECT pg_notify('chan one', 'hello')")
            assert await ln.receive() == Notification("chan one", "hello")
            first_pid = ln.backend_pid
            assert await db.fetchval("SELECT pg_terminate_backend($1)", first_pid)
            event = await ln.receive()
            assert event == MissedNotifications("reconnected")
            assert ln.backend_pid != first_pid
            assert ln.reconnects == 1
            await db.execute("SELECT pg_notify('chan one', 'again')")
            assert await ln.receive() == Notification("chan one", "again")


async def test_realtime_stand_in_sends_compact_events_and_can_be_switched_off(dsn: str) -> None:
    run_sql(dsn, "SELECT pgflow.create_flow('f')")
    run_sql(dsn, "SELECT pgflow.add_step('f', 'a')")
    big = json.dumps({"big": "x" * 20_000})
    with trio.fail_after(30):
        async with (
            open_database(dsn, max_size=1) as db,
            open_listener(db, ["pgflow_trio_events"]) as ln,
            db.connection() as con,
        ):
            await con.execute("SET pgflow_trio.events = 'off'")
            silent = await con.fetchval("SELECT run_id FROM pgflow.start_flow('f', $1::jsonb)", big)
            await con.execute("RESET pgflow_trio.events")
            loud = await con.fetchval("SELECT run_id FROM pgflow.start_flow('f', $1::jsonb)", big)
            # NOTIFYs arrive in commit order: had the first run notified, its event would come first.
            event = await ln.receive()
            assert isinstance(event, Notification)
            payload = json.loads(event.payload)
            assert payload["run_id"] == str(loud) != str(silent)
            assert payload["event"] == "run:started"
            assert payload["flow_slug"] == "f"
            assert payload["status"] == "started"
            assert set(payload) <= {"event", "run_id", "flow_slug", "step_slug", "status", "task_index", "error"}
            assert len(event.payload) < 1000


@pytest.mark.parametrize(
    "message",
    [
        "cannot switch to state 15; another operation (2) is in progress",
        'cannot switch to state 12; protocol is in the "failed" state',
    ],
)
def test_a_protocol_left_dead_by_the_server_is_connection_lost(message: str) -> None:
    # What asyncpg raises when the server's FATAL for a terminated backend was read but not yet the socket's end.
    assert isinstance(translate(asyncpg.InternalClientError(message)), ConnectionLost)
    assert not isinstance(
        translate(asyncpg.InterfaceError("cannot perform operation: another operation is in progress")),
        ConnectionLost,
    )


def test_pgflow_error_is_the_root() -> None:
    assert issubclass(DatabaseError, PgflowError)
    assert issubclass(ConnectionLost, DatabaseError)
