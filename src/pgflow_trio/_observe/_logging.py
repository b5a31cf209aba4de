"""Structured log fields: the same names as the lifecycle events' metadata, passed as `extra` on every log record of
the worker, the scheduler and the engine, so that JSON log formatters pick them up (`record.run_id`, ...).

Ids are logged as strings (JSON has no UUID). A failure is logged as one line carrying `type: message`; its
traceback goes to DEBUG, or onto that line's record when asked (`WorkerOptions(log_tracebacks=True)`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

_SUMMARY_LIMIT = 2000


def worker_fields(worker_id: uuid.UUID, flow_slug: str) -> dict[str, Any]:
    """`extra` of a worker's records."""
    return {"worker_id": str(worker_id), "flow_slug": flow_slug}


def task_fields(
    *,
    worker_id: uuid.UUID | None,
    flow_slug: str,
    step_slug: str,
    task_index: int,
    run_id: uuid.UUID,
    attempt: int | None = None,
    msg_id: int | None = None,
) -> dict[str, Any]:
    """`extra` of a record about one task (fields that do not apply are left out)."""
    fields: dict[str, Any] = {
        "flow_slug": flow_slug,
        "step_slug": step_slug,
        "task_index": task_index,
        "run_id": str(run_id),
    }
    if worker_id is not None:
        fields["worker_id"] = str(worker_id)
    if attempt is not None:
        fields["attempt"] = attempt
    if msg_id is not None:
        fields["msg_id"] = msg_id
    return fields


def run_fields(run_id: uuid.UUID, flow_slug: str | None = None) -> dict[str, Any]:
    """`extra` of a record about one run."""
    fields: dict[str, Any] = {"run_id": str(run_id)}
    if flow_slug is not None:
        fields["flow_slug"] = flow_slug
    return fields


def summary(exc: BaseException) -> str:
    """`Type: message` on one line (whitespace, newlines included, collapsed), at most 2000 characters."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line[:_SUMMARY_LIMIT]


def log_failure(
    logger: logging.Logger,
    level: int,
    message: str,
    exc: BaseException,
    *,
    extra: Mapping[str, Any],
    tracebacks: bool,
) -> None:
    """One record at `level`: `message` then `: Type: message` on one line. The traceback goes on that record
    when `tracebacks`, else on a second record at DEBUG (emitted only when DEBUG is enabled)."""
    line = f"{message}: {summary(exc)}"
    fields = {**extra, "error_type": type(exc).__name__}
    if tracebacks:
        logger.log(level, "%s", line, exc_info=exc, extra=fields)
    else:
        logger.log(level, "%s", line, extra=fields)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("traceback of: %s", line, exc_info=exc, extra=fields)
