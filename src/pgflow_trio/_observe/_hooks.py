"""What the engine and the workers call for tracing and metrics: cheap no-ops while off, and the only place that
imports the optional libraries (OpenTelemetry, prometheus-client), when they are turned on."""

from __future__ import annotations

import functools
import importlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING

import trio

from pgflow_trio._exceptions import ConfigurationError, PgflowError
from pgflow_trio._store import Database
from pgflow_trio._store._traces import TraceContext, trace_contexts
from pgflow_trio._store._worker_queries import ClaimedTask

if TYPE_CHECKING:
    from pgflow_trio._observe._otel import RunStartSpan

log = logging.getLogger("pgflow_trio.tracing")

_NO_SPAN: AbstractContextManager[None] = nullcontext()


def require_otel(what: str) -> None:
    """ConfigurationError naming the extra when the OpenTelemetry API cannot be imported."""
    _require("opentelemetry.trace", f"{what} needs the OpenTelemetry API: pip install 'pgflow-trio[otel]'")
    importlib.import_module("pgflow_trio._observe._otel")


def require_prometheus(what: str) -> None:
    """ConfigurationError naming the extra when prometheus-client cannot be imported."""
    _require("prometheus_client", f"{what} needs prometheus-client: pip install 'pgflow-trio[prometheus]'")


def _require(module: str, message: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigurationError(message) from None


class _NotTraced:
    """What `run_start_span` yields while tracing is off."""

    trace: TraceContext | None = None

    def started(self, run_id: uuid.UUID, existed: bool, slug: str | None = None) -> None:
        pass


@contextmanager
def run_start_span(slug: str | None, enabled: bool) -> Iterator[RunStartSpan | _NotTraced]:
    """Around starting a run: with tracing on, a PRODUCER span whose context (`.trace`) is stored with the run;
    call `.started(run_id, existed)` once the run is known (`slug` None: its flow is named there)."""
    if not enabled:
        yield _NotTraced()
        return
    from pgflow_trio._observe import _otel

    with _otel.run_start_span(slug) as span:
        yield span


def task_span(
    flow_slug: str, task: ClaimedTask, worker_id: uuid.UUID, deadline: trio.CancelScope, enabled: bool
) -> AbstractContextManager[None]:
    """Around one handler call: with tracing on, a CONSUMER span in its run's trace, current while it runs
    (`deadline` is the task's timeout scope, to tell a timeout from other cancellations)."""
    if not enabled:
        return _NO_SPAN
    from pgflow_trio._observe import _otel

    return _otel.task_span(flow_slug, task, worker_id, deadline)


async def fetch_trace_contexts(db: Database, tasks: Sequence[ClaimedTask], enabled: bool) -> None:
    """After a claim, with tracing on: read the trace contexts of the batch's runs this process does not hold yet
    (one query). A failed read only leaves those tasks' spans unparented."""
    if not enabled or not tasks:
        return
    from pgflow_trio._observe import _otel

    missing = _otel.unknown({t.run_id for t in tasks})
    if not missing:
        return
    try:
        found = await db.run(functools.partial(trace_contexts, run_ids=missing))
    except PgflowError as exc:
        log.warning("reading the trace contexts of %d runs failed: %s", len(missing), exc)
        return
    _otel.remember(found)


async def run_metrics(
    db: Database,
    *,
    otel: bool,
    port: int | None,
    host: str,
    interval: float,
    stale_after: float,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Metrics until cancelled: the queue gauges' refresher, OpenTelemetry instruments on the global meter
    provider (`otel`), and a Prometheus endpoint (`port`). `task_status.started(bound port or None)`."""
    from pgflow_trio._observe._metrics import refresh_gauges

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(refresh_gauges, db, interval=interval, stale_after=stale_after))
        bound = None
        if port is not None:
            from pgflow_trio._observe._prometheus import serve_prometheus

            bound = await nursery.start(serve_prometheus, host, port)
        if otel:
            from pgflow_trio._observe._otel import GLOBAL_METRICS

            GLOBAL_METRICS.acquire()
        try:
            task_status.started(bound)
            await trio.sleep_forever()
        finally:
            if otel:
                GLOBAL_METRICS.release()
