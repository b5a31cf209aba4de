"""The exception hierarchy: everything pgflow_trio raises derives from `PgflowError`."""

from __future__ import annotations


class PgflowError(Exception):
    """Base class of every error pgflow_trio raises on purpose."""


class ConfigurationError(PgflowError):
    """An option, DSN or environment setting is missing or invalid; the message says what to set."""


class DatabaseError(PgflowError):
    """PostgreSQL reported an error. `sqlstate` keeps its five-character code; `__cause__` the driver's error."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (SQLSTATE {self.sqlstate})" if self.sqlstate else base


class ConnectionLost(DatabaseError):
    """The connection to PostgreSQL failed or was closed underneath us."""


class SchemaError(PgflowError):
    """The database schema is missing, incomplete or incompatible; the message names the command that fixes it."""


class IntegrityError(SchemaError):
    """A downloaded or supplied pgflow core tarball does not match its pinned sha512 integrity."""
