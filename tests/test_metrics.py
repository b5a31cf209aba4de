"""Task and queue metrics: the event subscriber, OpenTelemetry instruments, and Prometheus on --metrics-port."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from pgflow_trio import ConfigurationError
from pgflow_trio._definitions._flow import definition_of
from pgflow_trio._observe._events import TaskException, TaskStart, TaskStop, TaskTimeout, emit
from pgflow_trio._observe._metrics import GAUGES, QueueGauge, read_gauges, subscribe_recorder
from pgflow_trio._observe._otel import GLOBAL_METRICS, OtelRecorder
from pgflow_trio._observe._prometheus import serve_prometheus
from pgflow_trio._store import open_database
from pgflow_trio._store._registry import ensure_flow

from . import flows
from .helpers import ROOT, eventually, start_run, wait_run


def _task(kind: type[Any], flow: str = "f", step: str = "s", **fields: Any) -> Any:
    return kind(
        at=time.time(),
        worker_id=uuid.uuid4(),
        flow_slug=flow,
        step_slug=step,
        task_index=0,
        attempt=1,
        run_id=uuid.uuid4(),
        msg_id=1,
        **fields,
    )


def _emit_a_batch() -> None:
    """Two attempts started; one completed in 0.5 s, one failed in 2 s; one timed out on another step."""
    emit(_task(TaskStart, queue_wait=0.25))
    emit(_task(TaskStart, queue_wait=0.75))
    emit(_task(TaskStop, duration=0.5, queue_wait=0.25))
    emit(_task(TaskException, duration=2.0, error_type="ValueError", error="no", retryable=True))
    emit(_task(TaskTimeout, step="slow", duration=3.0, timeout=3.0))


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    if data is None:  # nothing recorded yet
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _by_step(points: list[Any], value: str = "value") -> dict[str, float]:
    return {p.attributes["pgflow.step_slug"]: getattr(p, value) for p in points}


def test_the_otel_recorder_counts_task_events_by_flow_and_step() -> None:
    reader = InMemoryMetricReader()
    recorder = OtelRecorder(MeterProvider(metric_readers=[reader]))
    with subscribe_recorder(recorder):
        _emit_a_batch()
    _emit_a_batch()  # unsubscribed: not counted
    points = _points(reader)
    assert _by_step(points["pgflow.tasks.completed"]) == {"s": 1}
    assert _by_step(points["pgflow.tasks.failed"]) == {"s": 1}
    assert _by_step(points["pgflow.tasks.timed_out"]) == {"slow": 1}
    assert {p.attributes["pgflow.flow_slug"] for p in points["pgflow.tasks.completed"]} == {"f"}
    durations = {
        (p.attributes["pgflow.step_slug"], p.attributes["pgflow.outcome"]): p.sum
        for p in points["pgflow.task.duration"]
    }
    assert durations == {("s", "completed"): 0.5, ("s", "failed"): 2.0, ("slow", "timed_out"): 3.0}
    [wait] = points["pgflow.task.queue_wait"]
    assert (wait.count, wait.sum) == (2, 1.0)


def test_the_otel_gauges_read_the_last_refreshed_values() -> None:
    reader = InMemoryMetricReader()
    OtelRecorder(MeterProvider(metric_readers=[reader]))
    saved = GAUGES.queues
    GAUGES.queues = (QueueGauge("a", 3, 1.5, 2), QueueGauge("b", 0, 0.0, 1))
    try:
        points = _points(reader)
    finally:
        GAUGES.queues = saved

    def by_queue(name: str) -> dict[str, float]:
        return {p.attributes["pgflow.queue"]: p.value for p in points[name]}

    assert by_queue("pgflow.queue.depth") == {"a": 3, "b": 0}
    assert by_queue("pgflow.queue.oldest_message_age") == {"a": 1.5, "b": 0.0}
    assert by_queue("pgflow.workers.live") == {"a": 2, "b": 1}


_GLOBAL_READER = InMemoryMetricReader()


def _global_reader() -> InMemoryMetricReader:
    """The reader of the global meter provider (which can be set once per process: the first caller sets it)."""
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        metrics.set_meter_provider(MeterProvider(metric_readers=[_GLOBAL_READER]))
    return _GLOBAL_READER


def test_two_users_of_the_global_instruments_count_each_task_once() -> None:
    _global_reader()
    GLOBAL_METRICS.acquire()
    GLOBAL_METRICS.acquire()
    try:
        emit(_task(TaskStop, flow="twice", duration=0.1, queue_wait=0.1))
    finally:
        GLOBAL_METRICS.release()
    emit(_task(TaskStop, flow="twice", duration=0.1, queue_wait=0.1))  # still one user
    GLOBAL_METRICS.release()
    emit(_task(TaskStop, flow="twice", duration=0.1, queue_wait=0.1))  # nobody: not counted
    points = _points(_GLOBAL_READER)["pgflow.tasks.completed"]
    assert [p.value for p in points if p.attributes["pgflow.flow_slug"] == "twice"] == [2]


def _scrape(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _samples(families: dict[str, Any], family: str, sample: str | None = None) -> dict[tuple[str, ...], float]:
    """Values of one family's samples (`sample`: the sample name, default the family's), by label values."""
    wanted = sample or family
    return (
        {
            tuple(v for k, v in sorted(s.labels.items()) if k != "le"): s.value
            for s in families[family].samples
            if s.name == wanted
        }
        if family in families
        else {}
    )


async def test_prometheus_serves_the_task_counters_histograms_and_gauges() -> None:
    saved = GAUGES.queues
    GAUGES.queues = (QueueGauge("q1", 4, 2.5, 1),)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(serve_prometheus, "127.0.0.1", 0)
                _emit_a_batch()
                families = await trio.to_thread.run_sync(_scrape, port)
                nursery.cancel_scope.cancel()
    finally:
        GAUGES.queues = saved
    assert _samples(families, "pgflow_tasks_completed", "pgflow_tasks_completed_total") == {("f", "s"): 1}
    assert _samples(families, "pgflow_tasks_failed", "pgflow_tasks_failed_total") == {("f", "s"): 1}
    assert _samples(families, "pgflow_tasks_timed_out", "pgflow_tasks_timed_out_total") == {("f", "slow"): 1}
    counts = _samples(families, "pgflow_task_duration_seconds", "pgflow_task_duration_seconds_count")
    assert counts == {("f", "completed", "s"): 1, ("f", "failed", "s"): 1, ("f", "timed_out", "slow"): 1}
    waits = _samples(families, "pgflow_task_queue_wait_seconds", "pgflow_task_queue_wait_seconds_sum")
    assert waits == {("f", "s"): 1.0}
    assert _samples(families, "pgflow_queue_depth") == {("q1",): 4}
    assert _samples(families, "pgflow_queue_oldest_message_age_seconds") == {("q1",): 2.5}
    assert _samples(families, "pgflow_workers_live") == {("q1",): 1}


async def test_a_metrics_port_in_use_is_a_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(10), pytest.raises(ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await serve_prometheus("127.0.0.1", port)


async def test_the_gauges_are_read_from_the_queues(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            await ensure_flow(db, definition_of(flows.Counted))
            for n in range(3):
                await start_run(db, "counted", n)
            await db.execute(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name) VALUES ($1, 'counted', 'test')",
                uuid.uuid4(),
            )
            gauges = {q.queue: q for q in await read_gauges(db, stale_after=30)}
    counted = gauges["counted"]
    assert (counted.depth, counted.live_workers) == (3, 1)
    assert counted.oldest_age >= 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def _worker_with_metrics(dsn: str, tmp_path: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgflow_trio",
                "worker",
                "tests/flows.py:Counted",
                "--dsn",
                dsn,
                "--metrics-port",
                str(port),
                "--metrics-interval",
                "0.2",
            ],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _scrape_when(port: int, ready: Any) -> dict[str, Any]:
    """Scrape until `ready(families)` holds (the endpoint comes up, the gauges refresh)."""
    while True:
        try:
            families = await trio.to_thread.run_sync(_scrape, port)
        except OSError:
            families = None
        if families is not None and ready(families):
            return families
        await trio.sleep(0.1)


async def test_a_worker_serves_its_queue_gauges_on_metrics_port(dsn: str, tmp_path: Path) -> None:
    port = _free_port()
    with trio.fail_after(60), _worker_with_metrics(dsn, tmp_path, port):
        families = await _scrape_when(port, lambda f: _samples(f, "pgflow_workers_live").get(("counted",)) == 1)
    assert _samples(families, "pgflow_queue_depth") == {("counted",): 0}
    assert _samples(families, "pgflow_queue_oldest_message_age_seconds") == {("counted",): 0}
    assert "pgflow_tasks_completed" in families  # declared before any task ran


async def test_a_scrape_of_metrics_port_counts_the_runs_done(dsn: str, tmp_path: Path) -> None:
    port = _free_port()
    with trio.fail_after(60), _worker_with_metrics(dsn, tmp_path, port):
        async with open_database(dsn, max_size=2) as db:
            await _scrape_when(port, lambda f: _samples(f, "pgflow_workers_live").get(("counted",)) == 1)
            runs = [await start_run(db, "counted", n) for n in range(5)]
            for run_id in runs:
                assert (await wait_run(db, run_id))[0] == "completed"
            families = await _scrape_when(
                port, lambda f: _samples(f, "pgflow_tasks_completed", "pgflow_tasks_completed_total")
            )
    assert _samples(families, "pgflow_tasks_completed", "pgflow_tasks_completed_total") == {("counted", "work"): 5}
    waits = _samples(families, "pgflow_task_queue_wait_seconds", "pgflow_task_queue_wait_seconds_count")
    assert waits == {("counted", "work"): 5}


async def test_serve_with_a_metrics_port_reports_the_bound_port_and_closes_it(dsn: str) -> None:
    from pgflow_trio import WorkerGroup, serve

    from .helpers import FAST

    options = attrs.evolve(FAST, metrics_port=0, metrics_interval=0.1)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            group: WorkerGroup = await nursery.start(functools.partial(serve, flows.Counted, dsn=dsn, options=options))
            assert group.metrics_port is not None and group.metrics_port > 0
            families = await _scrape_when(
                group.metrics_port, lambda f: _samples(f, "pgflow_workers_live").get(("counted",)) == 1
            )
            assert _samples(families, "pgflow_queue_depth") == {("counted",): 0}
            port = group.metrics_port
            nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.to_thread.run_sync(_scrape, port)


async def test_a_worker_with_otel_feeds_the_global_meter_provider(dsn: str) -> None:
    from pgflow_trio import WorkerGroup, serve

    from .helpers import FAST

    reader = _global_reader()

    async def counted_is_live() -> bool:
        points = _points(reader).get("pgflow.workers.live", [])
        return {p.attributes["pgflow.queue"]: p.value for p in points}.get("counted") == 1

    options = attrs.evolve(FAST, otel=True, metrics_interval=0.1)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            group: WorkerGroup = await nursery.start(functools.partial(serve, flows.Counted, dsn=dsn, options=options))
            assert group.metrics_port is None
            await eventually(counted_is_live, 0.05)
            nursery.cancel_scope.cancel()
