"""Flows for the OpenTelemetry tests, and an SDK set up for worker subprocesses.

When `PGFLOW_TEST_OTEL_SPANS` names a file, importing this module installs a tracer provider that appends every
finished span to that file as one JSON line; when `PGFLOW_TEST_OTEL_METRICS` names one, a meter provider that
appends its metrics as JSON lines when it collects (every `PGFLOW_TEST_OTEL_METRICS_MS` ms, and at exit). Nothing
leaves the machine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import trio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from pgflow_trio import Context, Flow, Job, map_step, step

SPANS_ENV = "PGFLOW_TEST_OTEL_SPANS"
METRICS_ENV = "PGFLOW_TEST_OTEL_METRICS"
tracer = trace.get_tracer("tests.otel_targets")


class Traced(Flow[list[int], dict[str, Any]], slug="otel_traced", max_attempts=2, base_delay=1):
    """A map step (one element fails its first attempt), a step that times out on its first attempt, a fan-in."""

    @map_step
    async def square(self, n: int, ctx: Context) -> int:
        with tracer.start_as_current_span("user work") as span:  # the handler's own span nests under the task's
            span.set_attribute("n", n)
            await trio.sleep(0.2)  # long enough for both workers to get elements
            if n == 3 and ctx.attempt == 1:
                raise ValueError("three fails once")
        return n * n

    @step(timeout=3)
    async def nap(self, ctx: Context) -> str:
        if ctx.attempt == 1:
            await trio.sleep(30)
        return "rested"

    @step
    async def total(self, square: list[int], nap: str) -> dict[str, Any]:
        return {"sum": sum(square), "nap": nap}


entered = trio.Event()  # set when Hold's handler runs (in-process tests)


class Hold(Job[int, None], queue="otel_hold"):
    """Waits until cancelled."""

    async def perform(self, n: int, ctx: Context) -> None:
        entered.set()
        await trio.sleep_forever()


class _JsonLines:
    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def write(self, lines: Sequence[str]) -> None:
        with self._lock, open(self._path, "a", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in lines)


class FileSpanExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self._out = _JsonLines(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._out.write([span.to_json(indent=None) for span in spans])
        return SpanExportResult.SUCCESS


class FileMetricExporter(MetricExporter):
    def __init__(self, path: str) -> None:
        super().__init__(preferred_temporality={}, preferred_aggregation={})
        self._out = _JsonLines(path)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self._out.write([metrics_data.to_json(indent=None)])
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _install() -> None:
    spans = os.environ.get(SPANS_ENV)
    if spans:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(spans)))
        trace.set_tracer_provider(provider)
    metrics_file = os.environ.get(METRICS_ENV)
    if metrics_file:
        interval = int(os.environ.get("PGFLOW_TEST_OTEL_METRICS_MS", "500"))
        reader = PeriodicExportingMetricReader(FileMetricExporter(metrics_file), export_interval_millis=interval)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


_install()
