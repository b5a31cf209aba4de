"""The exception hierarchy: everything pgflow_trio raises on purpose derives from `PgflowError`. The bottom layer: it
imports nothing of the package."""

from __future__ import annotations

import uuid


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


class DefinitionError(PgflowError):
    """A flow, job or spec is invalid. The message names the definition, the step and what to change."""


class SerializationError(PgflowError):
    """A value could not be converted to or from JSON; the message shows where (`$.path`) and why."""


class TaskInputError(SerializationError):
    """A task input cannot be structured into the handler's parameters. No retry can change the input, so a worker
    fails such a task at once."""


class RunNotFound(PgflowError):
    """No run has this id."""


class FlowNotFound(PgflowError):
    """No flow has this slug in the database."""


class FlowInUse(PgflowError):
    """Live workers still serve the flow; stop them first or pass force=True."""


class RunFailed(PgflowError):
    """The run failed: `step_slug` is the step that failed and `error` its last error message."""

    def __init__(self, run_id: uuid.UUID, flow_slug: str, step_slug: str | None, error: str | None) -> None:
        where = f" at step {step_slug!r}" if step_slug else ""
        super().__init__(f"run {run_id} of {flow_slug} failed{where}: {error or 'no error message'}")
        self.run_id = run_id
        self.flow_slug = flow_slug
        self.step_slug = step_slug
        self.error = error


class RunTimeout(PgflowError, TimeoutError):
    """Waiting for a run's result took longer than the timeout given; the run itself goes on."""


class FlowMismatch(DefinitionError):
    """The database holds a flow with this slug whose shape or options differ from the code."""


class ScheduleNotFound(PgflowError):
    """No schedule of that name exists; the message lists those that do."""
