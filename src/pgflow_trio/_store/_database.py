"""A pool of asyncpg connections used from Trio, through a driver that bridges Trio and asyncio (`_driver`).

The asyncio loop lives exactly as long as `open_database`. Every call crosses from Trio into asyncio once: use
`Database.run` to run several statements in one crossing on the hot path. Cancelling the Trio scope cancels the
query on the server; cleanups (rollback, release, pool close) are shielded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
import trio

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy
    from asyncpg.transaction import Transaction

from pgflow_trio._exceptions import ConnectionLost
from pgflow_trio._store._driver import Driver, open_driver, resolve_driver
from pgflow_trio._store._dsn import Address, connect_timeout_from, parse_dsn
from pgflow_trio._store._errors import mapped_errors
from pgflow_trio._store._probe import probe
from pgflow_trio._util import unwrap_single_errors

T = TypeVar("T")
RawConnection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
Record = asyncpg.Record

_CLEANUP_SECONDS = 10.0
_PROBE_SECONDS = 3.0


class _Statements:
    """One statement in one crossing, for whatever `run` means in the subclass (a pooled or a held connection)."""

    async def run(self, fn: Callable[[RawConnection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def execute(self, sql: str, *args: object) -> str:
        return await self.run(lambda c: c.execute(sql, *args))

    async def fetch(self, sql: str, *args: object) -> list[Record]:
        return await self.run(lambda c: c.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: object) -> Record | None:
        return await self.run(lambda c: c.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: object) -> Any:
        return await self.run(lambda c: c.fetchval(sql, *args))


class Connection(_Statements):
    """One pooled connection held across several Trio calls (for transactions the caller drives)."""

    def __init__(self, db: Database, raw: RawConnection) -> None:
        self._db = db
        self._raw = raw

    async def run(self, fn: Callable[[RawConnection], Awaitable[T]]) -> T:
        """Run `fn(connection)` inside asyncio on this connection, in one crossing."""
        raw = self._raw

        async def call() -> T:
            return await fn(raw)

        return await self._db._cross(call())


class Database(_Statements):
    """Pooled access to PostgreSQL from Trio. Create it with `open_database`."""

    def __init__(self, driver: Driver, pool: asyncpg.Pool[asyncpg.Record], dsn: str, connect_timeout: float) -> None:
        self._driver = driver
        self._pool = pool
        self.dsn = dsn
        """The DSN as asyncpg reads it (checked; key=value pairs as a URI; without connect_timeout)."""
        self.connect_timeout = connect_timeout
        """Seconds a new connection may take (pass it to any extra `asyncpg.connect`)."""

    @property
    def driver(self) -> str:
        """The driver that bridges Trio and asyncio for this database: `trio-asyncio` or `thread`."""
        return self._driver.name

    async def _cross(self, coro: Coroutine[Any, Any, T]) -> T:
        with mapped_errors():
            return await self._driver.cross(coro)

    async def run(self, fn: Callable[[RawConnection], Awaitable[T]]) -> T:
        """Acquire a connection and run `fn(connection)` inside asyncio, in one crossing."""
        pool = self._pool

        async def call() -> T:
            async with pool.acquire() as raw:
                return await fn(raw)

        return await self._cross(call())

    @asynccontextmanager
    async def connection(self, *, user_sql: bool = False) -> AsyncIterator[Connection]:
        """Hold one pooled connection; it is released (shielded) when the block ends.

        Pooled connections are not reset on release (that would cost a round trip per query): our own SQL leaves
        no session state. Pass `user_sql=True` when arbitrary SQL may run on it (SET, LISTEN, session locks): the
        connection is then fully reset before it goes back."""
        pool = self._pool

        async def acquire() -> RawConnection:
            return await pool.acquire()

        raw = await self._cross(acquire())
        try:
            yield Connection(self, raw)
        finally:
            with trio.CancelScope(shield=True):
                await self._release(raw, full_reset=user_sql)

    async def _release(self, raw: RawConnection, *, full_reset: bool = False) -> None:
        pool = self._pool

        async def release() -> None:
            if full_reset and not raw.is_closed() and not raw.is_in_transaction():
                await raw.execute(raw.get_reset_query())
            await pool.release(raw, timeout=_CLEANUP_SECONDS)

        try:
            await self._cross(release())
        except Exception:
            # A connection that cannot be reset is useless: drop it rather than return it to the pool.
            self._driver.call_in_loop(raw.terminate)

    @asynccontextmanager
    async def transaction(self, *, user_sql: bool = False) -> AsyncIterator[Connection]:
        """A transaction on one connection: committed when the block exits normally, else rolled back (shielded).

        It is asyncpg's own transaction, so `RawConnection.transaction()` inside `Connection.run` nests as a
        savepoint."""
        async with self.connection(user_sql=user_sql) as conn:
            raw = conn._raw

            async def begin() -> Transaction:
                xact = raw.transaction()
                await xact.start()
                return xact

            xact = await self._cross(begin())
            try:
                yield conn
            except BaseException:
                with trio.CancelScope(shield=True):
                    await _rollback_or_drop(self, conn, xact)
                raise
            else:
                await self._cross(xact.commit())

    @asynccontextmanager
    async def dedicated_session(self) -> AsyncIterator[DedicatedSession]:
        """A connection of its own, outside the pool, for session state that must last exactly as long as it
        (session-level advisory locks, LISTEN). `session.lost` is set when the server ends the session; the
        connection is closed when the block ends, which releases everything the session held."""
        lost = trio.Event()

        def terminated(_con: object) -> None:
            lost.set()

        on_terminate = self._driver.into_trio(terminated)
        dsn, timeout = self.dsn, self.connect_timeout

        async def connect() -> asyncpg.Connection[asyncpg.Record]:
            con = await asyncpg.connect(dsn, timeout=timeout)
            con.add_termination_listener(on_terminate)
            return con

        con = await self._cross(connect())
        try:
            yield DedicatedSession(self, con, lost)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_SECONDS):
                await self._driver.cross(_settle_and_close(con))
            self._driver.call_in_loop(con.terminate)


class DedicatedSession:
    """One connection of its own (see `Database.dedicated_session`)."""

    def __init__(self, db: Database, raw: asyncpg.Connection[asyncpg.Record], lost: trio.Event) -> None:
        self._db = db
        self._raw = raw
        self.lost = lost
        """Set once the server has ended the session (what it held, such as advisory locks, is gone)."""
        self.backend_pid: int = raw.get_server_pid()

    async def execute(self, sql: str, *args: object) -> str:
        return await self._db._cross(self._raw.execute(sql, *args))

    async def fetch(self, sql: str, *args: object) -> list[Record]:
        return await self._db._cross(self._raw.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: object) -> Record | None:
        return await self._db._cross(self._raw.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: object) -> Any:
        return await self._db._cross(self._raw.fetchval(sql, *args))

    async def listen(self, channels: Sequence[str], deliver: Callable[[str, str], object]) -> None:
        """LISTEN on `channels`; `deliver(channel, payload)` runs in Trio for each notification, in order."""

        def notified(_con: object, _pid: int, channel: str, payload: object) -> None:
            deliver(channel, str(payload))

        on_notify = self._db._driver.into_trio(notified)
        raw = self._raw

        async def add() -> None:
            for channel in channels:
                await raw.add_listener(channel, on_notify)

        await self._db._cross(add())


async def _settle_and_close(con: asyncpg.Connection[asyncpg.Record]) -> None:
    """Close `con` once a query cancelled on it has stopped on the server.

    A backend busy with a query does not read its socket: closed mid-query, the session (and the locks it holds)
    would outlive the block until that query ends. A trivial query waits for asyncpg's cancel request to land."""
    try:
        if not con.is_closed():
            await con.execute("SELECT 1", timeout=_CLEANUP_SECONDS)
            await con.close(timeout=_CLEANUP_SECONDS)
    except Exception:
        con.terminate()


async def _rollback_or_drop(db: Database, conn: Connection, xact: Transaction) -> None:
    try:
        await db._cross(xact.rollback())
    except Exception:
        db._driver.call_in_loop(conn._raw.terminate)


@asynccontextmanager
async def open_database(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float | None = None,
    driver: str | None = None,
) -> AsyncIterator[Database]:
    """Open an asyncio loop and an asyncpg pool for the duration of the block.

    The DSN is checked first (ConfigurationError naming the problem). `connect_timeout` bounds each new
    connection (default: the DSN's connect_timeout, else $PGFLOW_CONNECT_TIMEOUT, else 10 s); when connecting
    fails without a server error, the address is probed to say what answers there instead of PostgreSQL.
    `driver` bridges Trio and asyncio: `auto` (trio-asyncio when it imports, else thread), `trio-asyncio` or
    `thread` (default: $PGFLOW_DRIVER, else auto)."""
    parsed = parse_dsn(dsn)
    timeout = connect_timeout_from(connect_timeout, parsed)
    name = resolve_driver(driver)
    async with unwrap_single_errors(), open_driver(name) as bridge:

        async def create() -> asyncpg.Pool[asyncpg.Record]:
            return await asyncpg.create_pool(
                parsed.uri, min_size=min_size, max_size=max_size, reset=_keep_session, timeout=timeout
            )

        try:
            with mapped_errors():
                pool = await bridge.cross(create())
        except ConnectionLost as exc:
            raise await _explained(exc, parsed.addresses, timeout) from exc.__cause__
        try:
            yield Database(bridge, pool, parsed.uri, timeout)
        finally:
            with trio.CancelScope(shield=True):
                await _close_pool(bridge, pool)


async def _explained(exc: ConnectionLost, addresses: tuple[Address, ...], seconds: float) -> ConnectionLost:
    """`exc` saying what answers at the DSN's addresses instead of PostgreSQL, or that connecting timed out."""
    cause = exc.__cause__
    if isinstance(cause, asyncpg.PostgresError):
        return exc  # the server itself refused: its message and SQLSTATE say why
    if isinstance(cause, TimeoutError) and not isinstance(cause, ConnectionError):
        reason = f"no connection within {seconds:g}s (connect_timeout)"
    else:
        reason = str(cause) if cause is not None and str(cause) else str(exc)
    findings = []
    for address in addresses:
        is_postgres, found = await probe(address, min(seconds, _PROBE_SECONDS))
        if not is_postgres:
            findings.append(found)
    if findings:
        reason = "; ".join(findings)
    return ConnectionLost(f"cannot reach PostgreSQL: {reason}", exc.sqlstate)


async def _keep_session(raw: object) -> None:
    """Pool reset hook: asyncpg has already rolled back any open transaction; skip the reset query round trip."""


async def _close_pool(driver: Driver, pool: asyncpg.Pool[asyncpg.Record]) -> None:
    with trio.move_on_after(_CLEANUP_SECONDS) as scope:
        try:
            await driver.cross(pool.close())
        except Exception:
            scope.cancel()
    if scope.cancelled_caught:
        driver.call_in_loop(pool.terminate)
