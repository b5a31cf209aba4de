"""The exception hierarchy: everything pgflow_trio raises on purpose derives from `PgflowError`. The bottom layer: it
imports nothing of the package."""

from __future__ import annotations

import datetime
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


class RunCancelled(RunFailed):
    """The run was cancelled (`engine.cancel_run`): `reason`, `cancelled_by` and `cancelled_at` say why, by whom and
    when. A subclass of RunFailed, since a cancelled run stops as a failed one does."""

    def __init__(
        self,
        run_id: uuid.UUID,
        flow_slug: str,
        *,
        reason: str | None,
        cancelled_by: str | None,
        cancelled_at: datetime.datetime,
    ) -> None:
        error = "Cancelled" + (f" by {cancelled_by}" if cancelled_by else "") + (f": {reason}" if reason else "")
        super().__init__(run_id, flow_slug, None, error)
        self.args = (
            f"run {run_id} of {flow_slug} was cancelled at {cancelled_at.isoformat(timespec='seconds')}"
            + (f" by {cancelled_by}" if cancelled_by else "")
            + (f": {reason}" if reason else ""),
        )
        self.reason = reason
        self.cancelled_by = cancelled_by
        self.cancelled_at = cancelled_at


class RunNotActive(PgflowError):
    """The run cannot be cancelled: it is not started any more (`state` says what it is: completed, failed or
    cancelled). Retry a failed or cancelled run, or rerun a finished one."""

    sqlstate = "PF002"
    """The SQLSTATE pgflow_trio's SQL function raised it with (callers of the SQL function see this code)."""

    def __init__(self, message: str, *, run_id: uuid.UUID, state: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.state = state


class RunNotRetryable(PgflowError):
    """The run cannot be retried in place: only failed or cancelled runs can (`state` says what it is). Cancel a
    started run first, or rerun a completed one."""

    sqlstate = "PF002"
    """The SQLSTATE pgflow_trio's SQL function raised it with (callers of the SQL function see this code)."""

    def __init__(self, message: str, *, run_id: uuid.UUID, state: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.state = state


class FlowChanged(PgflowError):
    """The run's flow changed shape since the run started (a step added, dependencies or step types that no longer
    match the run's state), so it cannot be retried in place; `differences` lists them. Rerun it instead."""

    sqlstate = "PF003"
    """The SQLSTATE pgflow_trio's SQL function raised it with (callers of the SQL function see this code)."""

    def __init__(self, message: str, *, run_id: uuid.UUID, differences: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.differences = differences
