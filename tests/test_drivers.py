"""Both drivers between Trio and asyncio (trio-asyncio, and asyncio in a thread) against a real PostgreSQL."""

from __future__ import annotations

import threading

import asyncpg
import pytest
import trio

from pgflow_trio import ConfigurationError, ConnectionLost, DatabaseError
from pgflow_trio._store import Database, MissedNotifications, Notification, _driver, open_database, open_listener
from pgflow_trio._store._thread_driver import THREAD_NAME

from .helpers import run_sql

LOCK = 4_242_001


@pytest.fixture(params=["trio-asyncio", "thread"])
def driver(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "trio-asyncio" and _driver.trio_asyncio_problem() is not None:
        pytest.skip(str(_driver.trio_asyncio_problem()))
    return name


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


async def _wait_until_active(admin: Database, marker: str, active: bool) -> None:
    """Poll the server's view until a query containing `marker` runs (or no longer runs): no event says so."""
    query = (
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()"
    )
    while True:
        if await admin.fetchval(query, f"%{marker}%") == active:
            return
        await trio.sleep(0.02)


async def test_queries_return_their_results(dsn: str, driver: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2, driver=driver) as db:
            assert db.driver == driver
            assert await db.fetchval("SELECT 40 + $1::int", 2) == 42
            row = await db.fetchrow("SELECT 1 AS a, 'x' AS b")
            assert row is not None
            assert (row["a"], row["b"]) == (1, "x")
            assert [r[0] for r in await db.fetch("SELECT generate_series(1, 3)")] == [1, 2, 3]
            assert await db.execute("CREATE TABLE t (x int)") == "CREATE TABLE"

            async def two_statements(con: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> int:
                await con.execute("INSERT INTO t VALUES (1), (2)")
                total: int = await con.fetchval("SELECT sum(x) FROM t")
                return total

            assert await db.run(two_statements) == 3
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (3)")
            assert await db.fetchval("SELECT count(*) FROM t") == 3


async def test_a_transaction_is_rolled_back_when_its_scope_is_cancelled(dsn: str, driver: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1, driver=driver) as db:
            await db.execute("CREATE TABLE t (x int)")
            with trio.move_on_after(0.3) as scope:
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO t VALUES (1)")
                    await tx.fetchval("SELECT pg_sleep(60)")
            assert scope.cancelled_caught
            assert await db.fetchval("SELECT count(*) FROM t") == 0
            assert await db.fetchval("SELECT pg_current_xact_id_if_assigned() IS NULL")


async def test_cancelling_from_trio_cancels_the_query_on_the_server(dsn: str, driver: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1, driver=driver) as db, open_database(dsn, max_size=1) as admin:
            async with trio.open_nursery() as nursery:

                async def sleeper(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                    with trio.CancelScope() as scope:
                        task_status.started(scope)
                        await db.fetchval("SELECT pg_sleep(60) /* driver-cancel-me */")

                scope: trio.CancelScope = await nursery.start(sleeper)
                await _wait_until_active(admin, "driver-cancel-me", True)
                scope.cancel()
            await _wait_until_active(admin, "driver-cancel-me", False)
            # The single pooled connection came back idle, not mid-query.
            assert await db.fetchval("SELECT 41 + 1") == 42


async def test_errors_keep_their_sqlstate(dsn: str, driver: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1, driver=driver) as db:
            with pytest.raises(DatabaseError) as info:
                await db.fetchval("SELECT 1/0")
            assert info.value.sqlstate == "22012"
            assert isinstance(info.value.__cause__, asyncpg.DivisionByZeroError)
            with pytest.raises(DatabaseError) as info:
                async with db.transaction() as tx:
                    await tx.execute("SELECT * FROM no_such_table")
            assert info.value.sqlstate == "42P01"
            assert await db.fetchval("SELECT 1") == 1


async def test_a_terminated_backend_is_connection_lost(dsn: str, driver: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1, driver=driver) as db:
            async with db.connection() as con:
                pid = await con.fetchval("SELECT pg_backend_pid()")
                assert run_sql(dsn, "SELECT pg_terminate_backend($1)", pid) == [(True,)]
                with pytest.raises(ConnectionLost):
                    await con.fetchval("SELECT 1")
            assert await db.fetchval("SELECT 1") == 1  # the pool replaced the connection


async def test_listen_delivers_and_reports_missed_notifications_after_a_reconnect(dsn: str, driver: str) -> None:
    with trio.fail_after(60):
        async with (
            open_database(dsn, max_size=2, driver=driver) as db,
            open_listener(db, ["chan"], health_interval=0.5) as listener,
        ):
            await db.execute("SELECT pg_notify('chan', 'one'), pg_notify('chan', 'two')")
            assert await listener.receive() == Notification("chan", "one")
            assert await listener.receive() == Notification("chan", "two")
            first_pid = listener.backend_pid
            assert await db.fetchval("SELECT pg_terminate_backend($1)", first_pid)
            assert await listener.receive() == MissedNotifications("reconnected")
            assert listener.backend_pid != first_pid
            await db.execute("SELECT pg_notify('chan', 'three')")
            assert await listener.receive() == Notification("chan", "three")


async def test_callbacks_run_in_the_trio_thread(dsn: str, driver: str) -> None:
    seen: list[tuple[str, int]] = []
    arrived = trio.Event()

    def deliver(channel: str, payload: str) -> None:
        seen.append((payload, threading.get_ident()))
        arrived.set()

    with trio.fail_after(30):
        async with open_database(dsn, max_size=1, driver=driver) as db, db.dedicated_session() as session:
            await session.listen(["c"], deliver)
            await db.execute("SELECT pg_notify('c', 'p')")
            await arrived.wait()
            assert seen == [("p", threading.get_ident())]
            assert run_sql(dsn, "SELECT pg_terminate_backend($1)", session.backend_pid) == [(True,)]
            await session.lost.wait()


@pytest.mark.parametrize("ending", ["normally", "error", "cancelled"])
async def test_the_loop_thread_is_gone_after_the_block(dsn: str, driver: str, ending: str) -> None:
    assert not _loop_threads()
    with trio.fail_after(30):
        with trio.CancelScope() as outer:
            try:
                async with open_database(dsn, max_size=2, driver=driver) as db:
                    assert len(_loop_threads()) == (1 if driver == "thread" else 0)
                    async with db.transaction() as tx:
                        await tx.execute("SELECT 1")
                        if ending == "error":
                            raise KeyError("boom")
                        if ending == "cancelled":
                            outer.cancel()
                            await tx.fetchval("SELECT pg_sleep(60)")
            except KeyError:
                assert ending == "error"
        assert outer.cancelled_caught == (ending == "cancelled")
    assert not _loop_threads()


async def test_the_dedicated_session_releases_its_lock_when_the_block_ends(dsn: str, driver: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1, driver=driver) as db, db.connection() as other:
            async with db.dedicated_session() as session:
                assert await session.fetchval("SELECT pg_try_advisory_lock($1)", LOCK)
                assert not await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK)
                assert not session.lost.is_set()
            # Waits (on the server) until the ended session's lock is gone.
            await other.fetchval("SELECT pg_advisory_lock($1)", LOCK)
            assert await other.fetchval("SELECT pg_advisory_unlock($1)", LOCK)
            with trio.move_on_after(0.2):
                async with db.dedicated_session() as session:
                    assert await session.fetchval("SELECT pg_try_advisory_lock($1)", LOCK)
                    await session.fetchval("SELECT pg_sleep(60)")
            await other.fetchval("SELECT pg_advisory_lock($1)", LOCK)


async def test_the_dedicated_session_reports_its_loss(dsn: str, driver: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=1, driver=driver) as db, db.dedicated_session() as session:
            assert await db.fetchval("SELECT pg_terminate_backend($1)", session.backend_pid)
            await session.lost.wait()
            with pytest.raises(ConnectionLost):
                await session.fetchval("SELECT 1")


async def test_an_unknown_driver_is_refused(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown database driver 'gevent' \(driver=\).*auto, trio-asyncio"):
        async with open_database(dsn, driver="gevent"):
            pass
    monkeypatch.setenv("PGFLOW_DRIVER", "threads")
    with pytest.raises(ConfigurationError, match=r"'threads' \(PGFLOW_DRIVER\)"):
        async with open_database(dsn):
            pass


def test_trio_asyncio_is_refused_where_it_does_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_driver, "trio_asyncio_problem", lambda: "trio-asyncio does not import on Python 3.99")
    with pytest.raises(ConfigurationError, match=r"trio-asyncio \(driver=\): .* Python 3\.99; use thread or auto"):
        _driver.resolve_driver("trio-asyncio")
    monkeypatch.setenv("PGFLOW_DRIVER", "auto")
    assert _driver.resolve_driver() == "thread"
    assert _driver.resolve_driver("Thread ") == "thread"


def test_auto_prefers_trio_asyncio_when_it_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGFLOW_DRIVER", raising=False)
    expected = "trio-asyncio" if _driver.trio_asyncio_problem() is None else "thread"
    assert _driver.resolve_driver() == expected
    assert _driver.resolve_driver("auto") == expected


@pytest.mark.parametrize("driver", ["trio-asyncio", "thread"])
async def test_engines_and_workers_take_the_driver(dsn: str, driver: str) -> None:
    import functools

    from pgflow_trio import WorkerGroup, open_engine, serve

    from . import flows
    from .helpers import FAST

    if driver == "trio-asyncio" and _driver.trio_asyncio_problem() is not None:
        pytest.skip("trio-asyncio does not import here")
    with trio.fail_after(30):
        async with open_engine(dsn, driver=driver) as engine, trio.open_nursery() as nursery:  # type: ignore[arg-type]
            assert engine.db.driver == driver
            group: WorkerGroup = await nursery.start(
                functools.partial(serve, flows.Echo, dsn=dsn, options=FAST, driver=driver)  # type: ignore[arg-type]
            )
            assert {w.db.driver for w in group.workers} == {driver}
            handle = await engine.start("echo", {"message": "hi"})
            assert (await handle.get()).run_id == handle.run_id
            nursery.cancel_scope.cancel()


async def test_an_engine_refuses_an_unknown_driver(dsn: str) -> None:
    from pgflow_trio import open_engine

    with pytest.raises(ConfigurationError, match="engine option driver must be"):
        async with open_engine(dsn, driver="fast"):  # type: ignore[arg-type]
            pass
