"""Translate driver exceptions into the pgflow_trio hierarchy, keeping SQLSTATE and the original as the cause."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from pgflow_trio._exceptions import ConnectionLost, DatabaseError, PgflowError

_CONNECTION_CLASSES = ("08", "57P01", "57P02", "57P03")
# asyncpg's protocol states that only a dead connection leaves behind: "error consume" with nothing in flight is
# the server's unsolicited FATAL (pg_terminate_backend, shutdown) before the socket's end was read; "failed" is a
# protocol that cannot go on.
_DEAD_PROTOCOL = ("another operation (2) is in progress", 'protocol is in the "failed" state')


def translate(exc: BaseException) -> PgflowError | None:
    """Return the pgflow_trio error for a driver exception, or None when it is not a database error."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = exc.sqlstate
        message = str(exc) or type(exc).__name__
        if sqlstate is not None and sqlstate.startswith(_CONNECTION_CLASSES):
            return ConnectionLost(message, sqlstate)
        return DatabaseError(message, sqlstate)
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.InternalClientError)):
        message = str(exc) or type(exc).__name__
        if "closed" in message or "connection" in message.lower() or message.endswith(_DEAD_PROTOCOL):
            return ConnectionLost(message)
        return DatabaseError(message)
    if isinstance(exc, (ConnectionError, OSError)):
        return ConnectionLost(f"cannot reach PostgreSQL: {exc or type(exc).__name__}")
    return None


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Re-raise driver exceptions as `DatabaseError` / `ConnectionLost` (`raise ... from exc`)."""
    try:
        yield
    except PgflowError:
        raise
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc
