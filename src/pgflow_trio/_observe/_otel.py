"""OpenTelemetry spans and metric instruments (imported only once tracing or metrics are turned on).

Traces: the engine that starts a run opens a PRODUCER span, a child of the caller's current span, whose W3C context is
stored with the run (`pgflow_trio.run_traces`, in the transaction that starts it). Workers read the contexts of the
runs of each claimed batch and run each handler inside a CONSUMER span parented into its run's trace, current while
the handler runs so that the handler's own spans nest under it. Attributes follow the messaging semantic conventions
(`messaging.system` "pgflow", the queue as `messaging.destination.name`) plus `pgflow.*` ones.

Only the OpenTelemetry API is used: the SDK, exporters and samplers are the application's, set up as usual
(`trace.set_tracer_provider`, `metrics.set_meter_provider`), before or after the engine or workers start.
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

import trio
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pgflow_trio._observe._events import Subscription
from pgflow_trio._observe._metrics import GAUGES, TaskRecorder, subscribe_recorder
from pgflow_trio._store._traces import TraceContext
from pgflow_trio._store._worker_queries import ClaimedTask

SCOPE = "pgflow_trio"
SYSTEM = "pgflow"
_PROPAGATOR = TraceContextTextMapPropagator()
_KNOWN_RUNS = 10_000  # trace contexts kept per process (a task usually runs right after its batch was read)


def _version() -> str:
    try:
        return version("pgflow-trio")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
        return "0"


_tracer = trace.get_tracer(SCOPE, _version())  # a proxy until the application sets its provider


# ---- the run's span (client side) ------------------------------------------------------------------------------
class RunStartSpan:
    """The PRODUCER span of one `start`: `trace` is what to store with the run (None when nothing is traced)."""

    def __init__(self, span: trace.Span, trace_context: TraceContext | None) -> None:
        self.span = span
        self.trace = trace_context

    def started(self, run_id: uuid.UUID, existed: bool, slug: str | None = None) -> None:
        """Name the run (and its flow, when the span did not know it yet)."""
        self.span.set_attribute("pgflow.run_id", str(run_id))
        if existed:
            self.span.set_attribute("pgflow.run_existed", True)
        if slug is not None:
            self.span.update_name(f"start {slug}")
            self.span.set_attribute("messaging.destination.name", slug)


@contextmanager
def run_start_span(slug: str | None) -> Iterator[RunStartSpan]:
    """A PRODUCER span around starting a run of `slug` (child of the current span), current in the block. A rerun
    learns its flow only from the database: it passes None, then the slug to `started`."""
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "start",
    }
    if slug is not None:
        attributes["messaging.destination.name"] = slug
    name = "start" if slug is None else f"start {slug}"
    span = _tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes)
    with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)  # the current context: this span
            stored = TraceContext(carrier["traceparent"], carrier.get("tracestate")) if carrier else None
            yield RunStartSpan(span, stored)
        except Exception as exc:
            _record_error(span, exc)
            raise


# ---- task spans (worker side) ----------------------------------------------------------------------------------
_known: collections.OrderedDict[uuid.UUID, TraceContext] = collections.OrderedDict()
_known_lock = threading.Lock()  # workers of several Trio runs (threads) may share this process


def remember(contexts: Mapping[uuid.UUID, TraceContext]) -> None:
    """Keep the trace contexts of runs whose tasks were just claimed (the oldest are forgotten past a bound)."""
    with _known_lock:
        for run_id, found in contexts.items():
            _known[run_id] = found
            _known.move_to_end(run_id)
        while len(_known) > _KNOWN_RUNS:
            _known.popitem(last=False)


def unknown(run_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Those of `run_ids` whose trace context this process does not hold yet."""
    with _known_lock:
        return [r for r in run_ids if r not in _known]


def _parent(run_id: uuid.UUID) -> otel_context.Context:
    """The context a task of `run_id` is parented into: its run's span, else a new trace."""
    with _known_lock:
        found = _known.get(run_id)
    if found is None:
        return otel_context.Context()
    carrier = {"traceparent": found.traceparent}
    if found.tracestate:
        carrier["tracestate"] = found.tracestate
    return _PROPAGATOR.extract(carrier, context=otel_context.Context())


@contextmanager
def task_span(flow_slug: str, task: ClaimedTask, worker_id: uuid.UUID, deadline: trio.CancelScope) -> Iterator[None]:
    """A CONSUMER span for one attempt of `task`, current while its handler runs. A handler that raises records
    the exception with status ERROR; one cancelled at its step's timeout (`deadline`) records a TimeoutError."""
    attributes: dict[str, str | int] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": flow_slug,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": str(task.msg_id),
        "pgflow.run_id": str(task.run_id),
        "pgflow.step_slug": task.step_slug,
        "pgflow.task_index": task.task_index,
        "pgflow.attempt": task.attempt,
        "pgflow.worker_id": str(worker_id),
    }
    span = _tracer.start_span(
        f"process {flow_slug}.{task.step_slug}",
        context=_parent(task.run_id),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )
    with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            yield
        except BaseException as exc:
            # A handler that opened a nursery raises groups: a Cancelled inside one is still a cancellation, and
            # any other exception in it is the handler's error.
            errors = exc.split(trio.Cancelled)[1] if isinstance(exc, BaseExceptionGroup) else exc
            while isinstance(errors, BaseExceptionGroup) and len(errors.exceptions) == 1:
                errors = errors.exceptions[0]  # the one error a nursery wrapped
            if errors is not None and not isinstance(errors, trio.Cancelled):
                _record_error(span, errors)
            elif deadline.cancel_called and deadline.deadline <= trio.current_time():
                error = TimeoutError(f"step {task.step_slug!r} exceeded its timeout")
                span.set_attribute("pgflow.outcome", "timeout")
                _record_error(span, error)
            else:  # the run ended under it, or the worker is stopping: not a failed attempt
                span.set_attribute("pgflow.outcome", "cancelled")
            raise


def _record_error(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


# ---- metrics through the metrics API ---------------------------------------------------------------------------
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class OtelRecorder(TaskRecorder):
    """The task metrics as OpenTelemetry instruments of the global (or a given) meter provider, plus the queue
    gauges, whose callbacks read the values the refresher last fetched (never the database)."""

    def __init__(self, provider: metrics.MeterProvider | None = None) -> None:
        meter = (provider or metrics.get_meter_provider()).get_meter(SCOPE, _version())
        self._completed = meter.create_counter("pgflow.tasks.completed", "{task}", "task attempts that completed")
        self._failed = meter.create_counter("pgflow.tasks.failed", "{task}", "task attempts whose handler raised")
        self._timed_out = meter.create_counter(
            "pgflow.tasks.timed_out", "{task}", "task attempts cancelled at their step's timeout"
        )
        self._duration = meter.create_histogram(
            "pgflow.task.duration",
            "s",
            "how long handlers ran, by outcome",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._queue_wait = meter.create_histogram(
            "pgflow.task.queue_wait",
            "s",
            "from a task's message being enqueued to its handler starting",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        meter.create_observable_gauge(
            "pgflow.queue.depth", [self._depth], "{message}", "messages ready to be read, per queue"
        )
        meter.create_observable_gauge(
            "pgflow.queue.oldest_message_age",
            [self._oldest],
            "s",
            "how long the oldest ready message has waited, per queue",
        )
        meter.create_observable_gauge(
            "pgflow.workers.live", [self._live], "{worker}", "workers heartbeating, per queue"
        )

    def completed(self, flow: str, step: str) -> None:
        self._completed.add(1, _task_attributes(flow, step))

    def failed(self, flow: str, step: str) -> None:
        self._failed.add(1, _task_attributes(flow, step))

    def timed_out(self, flow: str, step: str) -> None:
        self._timed_out.add(1, _task_attributes(flow, step))

    def duration(self, flow: str, step: str, outcome: str, seconds: float) -> None:
        self._duration.record(seconds, {**_task_attributes(flow, step), "pgflow.outcome": outcome})

    def queue_wait(self, flow: str, step: str, seconds: float) -> None:
        self._queue_wait.record(seconds, _task_attributes(flow, step))

    @staticmethod
    def _depth(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(q.depth, {"pgflow.queue": q.queue}) for q in GAUGES.queues]

    @staticmethod
    def _oldest(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(q.oldest_age, {"pgflow.queue": q.queue}) for q in GAUGES.queues]

    @staticmethod
    def _live(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(q.live_workers, {"pgflow.queue": q.queue}) for q in GAUGES.queues]


def _task_attributes(flow: str, step: str) -> dict[str, str]:
    return {"pgflow.flow_slug": flow, "pgflow.step_slug": step}


class _GlobalMetrics:
    """The process's one OpenTelemetry recorder on the global meter provider, subscribed while anyone uses it (so
    two worker groups in one process do not count each task twice)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._recorder: OtelRecorder | None = None
        self._subscription: Subscription | None = None

    def acquire(self) -> None:
        with self._lock:
            if self._recorder is None:
                self._recorder = OtelRecorder()
            if self._users == 0:
                self._subscription = subscribe_recorder(self._recorder)
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._subscription is not None:
                self._subscription.close()
                self._subscription = None


GLOBAL_METRICS = _GlobalMetrics()
