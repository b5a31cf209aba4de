"""`engine.prune_runs`: its arguments checked, then the runtime's bounded, batched prune."""

from __future__ import annotations

import datetime

from pgflow_trio._client._manage import flow_exists
from pgflow_trio._exceptions import ConfigurationError, FlowNotFound
from pgflow_trio._models import PruneReport, PruneStatus
from pgflow_trio._runtime._pruner import prune, seconds_of
from pgflow_trio._store import Database


def checked_status(status: object) -> PruneStatus:
    if status == "completed" or status == "failed" or status == "all":
        return status
    raise ConfigurationError(f"status must be 'completed', 'failed' or 'all', got {status!r}")


def checked_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 100_000:
        raise ConfigurationError(f"batch_size must be an integer from 1 to 100000, got {batch_size!r}")
    return batch_size


async def prune_runs(
    db: Database,
    *,
    older_than: float | datetime.timedelta | str,
    status: PruneStatus,
    flow_slug: str | None,
    dry_run: bool,
    batch_size: int,
) -> PruneReport:
    """Check the arguments (ConfigurationError naming a bad one; FlowNotFound for an unknown flow), then prune."""
    seconds = seconds_of(older_than, what="older_than")
    if not isinstance(dry_run, bool):
        raise ConfigurationError(f"dry_run must be True or False, got {dry_run!r}")
    if flow_slug is not None and not await flow_exists(db, flow_slug):
        raise FlowNotFound(f"there is no flow {flow_slug!r} in the database (python -m pgflow_trio flows list)")
    return await prune(
        db,
        older_than=seconds,
        status=checked_status(status),
        flow_slug=flow_slug,
        dry_run=dry_run,
        batch_size=checked_batch_size(batch_size),
    )
