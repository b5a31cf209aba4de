"""What OpenTelemetry costs: throughput with tracing and metrics off vs on, as ratios measured in one run.

    python -m bench.otel [--dsn DSN] [--runs 2000] [--rounds 3]

A single-step job, two phases per mode on the same database: (1) start `runs` runs one after another through the
engine (with OTel on: a PRODUCER span each, its context stored in the starting transaction); (2) one worker
(concurrency 10, batch 10) runs them all (with OTel on: one trace-context read per claimed batch, a CONSUMER span
per task, task metrics from the events and the queue gauges). "on" has the real SDK installed: a TracerProvider with
a BatchSpanProcessor into an exporter that drops the spans, and a MeterProvider with an in-memory reader, so the
figures are the instrumentation's own cost, not an exporter's network. Modes alternate over `rounds`; medians.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Sequence

import trio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from pgflow_trio import Context, Job, WorkerGroup, WorkerOptions, open_engine

from ._common import bench_database


class OtelJob(Job[int, int], queue="bench_otel"):
    async def perform(self, n: int, ctx: Context) -> int:
        return n


class Dropping(SpanExporter):
    """Counts the spans it is handed and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def measure(dsn: str, runs: int, otel: bool) -> tuple[float, float]:
    """(starts/s, tasks/s) with OTel on or off."""
    async with open_engine(dsn, otel=otel) as engine, trio.open_nursery() as nursery:
        await engine.upsert_flow(OtelJob)
        began = time.perf_counter()
        handles = [await engine.start(OtelJob, n) for n in range(runs)]
        start_rate = runs / (time.perf_counter() - began)
        began = time.perf_counter()
        options = WorkerOptions(concurrency=10, batch_size=10, otel=otel)
        group: WorkerGroup = await nursery.start(functools.partial(engine.serve, OtelJob, options=options))
        await handles[-1].result(timeout=600)
        while await engine.db.fetchval("SELECT count(*) FROM pgflow.runs WHERE status = 'started'"):  # noqa: ASYNC110 - nothing to wait on
            await trio.sleep(0.01)
        task_rate = runs / (time.perf_counter() - began)
        group.stop()
    return start_rate, task_rate


def install_sdk() -> tuple[TracerProvider, Dropping]:
    """The OpenTelemetry SDK as an application would set it up, with spans dropped after export."""
    exporter = Dropping()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return tracer_provider, exporter


async def main(dsn: str | None, runs: int, rounds: int) -> None:
    tracer_provider, exporter = install_sdk()
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(rounds):
        for otel in (False, True):
            async with bench_database(dsn) as url:
                results[otel].append(await measure(url, runs, otel))
    tracer_provider.force_flush()
    print(f"OpenTelemetry off vs on: {runs} one-step runs per mode, {rounds} rounds (medians); {exporter.spans} spans")
    for index, what in ((0, "engine.start, runs/s"), (1, "one worker, tasks/s")):
        off = statistics.median(r[index] for r in results[False])
        on = statistics.median(r[index] for r in results[True])
        print(f"  {what:22} off {off:8.0f}   on {on:8.0f}   on/off {on / off:5.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.dsn, args.runs, args.rounds)
