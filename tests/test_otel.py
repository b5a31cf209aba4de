"""OpenTelemetry: one trace per run across worker processes, task spans, metrics through the metrics API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pgflow_trio import ConfigurationError, WorkerOptions, open_engine
from pgflow_trio._store import Database, open_database

from .helpers import ROOT, eventually, wait_run

TARGET = "tests/otel_targets.py:Traced"
SLUG = "otel_traced"
"""Task events reach the metrics only once the worker emits them."""

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans (the global tracer provider can be set once per process: the first test sets it)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _as_json(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    return [json.loads(span.to_json(indent=None)) for span in exporter.get_finished_spans()]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextmanager
def _worker_processes(dsn: str, tmp_path: Path, count: int, *extra: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` worker subprocesses serving the traced flow with --otel, each exporting its spans and metrics to
    files of its own (tmp_path/spans-N.jsonl, metrics-N.jsonl); stopped with SIGINT (gracefully) at the end."""
    procs = []
    try:
        for n in range(count):
            env = {
                **os.environ,
                "PGFLOW_TEST_OTEL_SPANS": str(tmp_path / f"spans-{n}.jsonl"),
                "PGFLOW_TEST_OTEL_METRICS": str(tmp_path / f"metrics-{n}.jsonl"),
            }
            with open(tmp_path / f"worker-{n}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "pgflow_trio", "worker", TARGET, "--dsn", dsn, "--otel", *extra],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def _database(dsn: str) -> AsyncIterator[Database]:
    async with open_database(dsn, max_size=2) as db:
        yield db


async def _wait_for_workers(db: Database, count: int) -> None:
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) >= $2 FROM pgflow.workers WHERE queue_name = $1 AND deprecated_at IS NULL", SLUG, count
        ),
        0.1,
    )


async def _traced_run(dsn: str, db: Database) -> tuple[uuid.UUID, dict[str, Any]]:
    """Start [1, 2, 3, 4] inside a caller's span on an engine with tracing on; wait for it to complete."""
    caller = trace.get_tracer("tests")
    async with open_engine(dsn, otel=True) as engine:
        with caller.start_as_current_span("caller"):
            handle = await engine.start(SLUG, [1, 2, 3, 4])
        status, output = await wait_run(db, handle.run_id)
    assert (status, output) == ("completed", {"total": {"sum": 30, "nap": "rested"}})
    return handle.run_id, output


def _by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


async def test_a_run_is_one_trace_across_two_worker_processes(
    dsn: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    with trio.fail_after(90), _worker_processes(dsn, tmp_path, 2, "--concurrency", "1") as procs:
        async with _database(dsn) as db:
            await _wait_for_workers(db, 2)
            run_id, _ = await _traced_run(dsn, db)
            traceparent = await db.fetchval("SELECT traceparent FROM pgflow_trio.run_traces WHERE run_id = $1", run_id)
            run_input = await db.fetchval("SELECT input::text FROM pgflow.runs WHERE run_id = $1", run_id)
    assert [p.returncode for p in procs] == [0, 0]

    local = _as_json(spans)
    [caller] = _by_name(local, "caller")
    [start] = _by_name(local, f"start {SLUG}")
    assert start["kind"] == "SpanKind.PRODUCER"
    assert start["parent_id"] == caller["context"]["span_id"]  # a child of the span the caller is in
    trace_id = start["context"]["trace_id"]
    assert start["attributes"] == {
        "messaging.system": "pgflow",
        "messaging.destination.name": SLUG,
        "messaging.operation.type": "send",
        "messaging.operation.name": "start",
        "pgflow.run_id": str(run_id),
    }
    # the stored context is the start span's, and the run's input is untouched
    assert traceparent.split("-")[:3] == ["00", trace_id[2:], start["context"]["span_id"][2:]]
    assert json.loads(run_input) == [1, 2, 3, 4]

    remote = _read_lines(tmp_path / "spans-0.jsonl") + _read_lines(tmp_path / "spans-1.jsonl")
    tasks = [s for s in remote if s["kind"] == "SpanKind.CONSUMER"]
    assert {s["context"]["trace_id"] for s in remote} == {trace_id}  # one trace, user spans included
    assert all(s["parent_id"] == start["context"]["span_id"] for s in tasks)  # the run's span is their parent
    attempts = sorted(
        (s["attributes"]["pgflow.step_slug"], s["attributes"]["pgflow.task_index"], s["attributes"]["pgflow.attempt"])
        for s in tasks
    )
    assert attempts == [
        ("nap", 0, 1),
        ("nap", 0, 2),
        ("square", 0, 1),
        ("square", 1, 1),
        ("square", 2, 1),
        ("square", 2, 2),
        ("square", 3, 1),
        ("total", 0, 1),
    ]
    assert len({s["attributes"]["pgflow.worker_id"] for s in tasks}) == 2  # both processes ran tasks
    for span in tasks:
        attributes = span["attributes"]
        assert span["name"] == f"process {SLUG}.{attributes['pgflow.step_slug']}"
        assert attributes["messaging.system"] == "pgflow"
        assert attributes["messaging.destination.name"] == SLUG
        assert attributes["messaging.operation.type"] == "process"
        assert int(attributes["messaging.message.id"]) > 0
        assert attributes["pgflow.run_id"] == str(run_id)

    def task(step: str, index: int, attempt: int) -> dict[str, Any]:
        [found] = [
            s
            for s in tasks
            if (s["attributes"]["pgflow.step_slug"], s["attributes"]["pgflow.task_index"]) == (step, index)
            and s["attributes"]["pgflow.attempt"] == attempt
        ]
        return found

    failed = task("square", 2, 1)
    assert failed["status"] == {"status_code": "ERROR", "description": "ValueError: three fails once"}
    [event] = failed["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "three fails once"

    timed_out = task("nap", 0, 1)
    assert timed_out["status"]["status_code"] == "ERROR"
    assert timed_out["attributes"]["pgflow.outcome"] == "timeout"
    assert [e["attributes"]["exception.type"] for e in timed_out["events"]] == ["TimeoutError"]

    for ok in (task("square", 2, 2), task("nap", 0, 2), task("total", 0, 1)):
        assert ok["status"]["status_code"] == "UNSET"
        assert ok["events"] == []

    # the handler's own spans nest under its task's span
    task_ids = {s["context"]["span_id"]: s for s in tasks}
    user = _by_name(remote, "user work")
    assert len(user) == 5
    assert all(task_ids[s["parent_id"]]["attributes"]["pgflow.step_slug"] == "square" for s in user)


def _sum_points(exports: list[dict[str, Any]], name: str) -> dict[tuple[str, str], float]:
    """The last export's cumulative values of metric `name`, by (flow, step)."""
    if not exports:
        return {}
    values: dict[tuple[str, str], float] = {}
    for resource in exports[-1]["resource_metrics"]:
        for scope in resource["scope_metrics"]:
            for metric in scope["metrics"]:
                if metric["name"] != name:
                    continue
                for point in metric["data"]["data_points"]:
                    key = (point["attributes"]["pgflow.flow_slug"], point["attributes"]["pgflow.step_slug"])
                    values[key] = values.get(key, 0) + point.get("value", point.get("count", 0))
    return values


def _added(*parts: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    total: dict[tuple[str, str], float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


async def test_metrics_of_two_worker_processes_count_the_tasks_they_ran(
    dsn: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    with trio.fail_after(90), _worker_processes(dsn, tmp_path, 2, "--concurrency", "1"):
        async with _database(dsn) as db:
            await _wait_for_workers(db, 2)
            await _traced_run(dsn, db)
    exports = [_read_lines(tmp_path / f"metrics-{n}.jsonl") for n in range(2)]
    completed = _added(*(_sum_points(e, "pgflow.tasks.completed") for e in exports))
    assert completed == {(SLUG, "square"): 4, (SLUG, "nap"): 1, (SLUG, "total"): 1}
    assert _added(*(_sum_points(e, "pgflow.tasks.failed") for e in exports)) == {(SLUG, "square"): 1}
    assert _added(*(_sum_points(e, "pgflow.tasks.timed_out") for e in exports)) == {(SLUG, "nap"): 1}
    durations = _added(*(_sum_points(e, "pgflow.task.duration") for e in exports))
    assert durations == {(SLUG, "square"): 5, (SLUG, "nap"): 2, (SLUG, "total"): 1}


async def test_the_trace_context_is_stored_in_the_transaction_that_starts_the_run(
    dsn: str, spans: InMemorySpanExporter
) -> None:
    from . import flows

    with trio.fail_after(30):
        async with open_engine(dsn, otel=True) as engine:
            await engine.upsert_flow(flows.Counted)
            with pytest.raises(RuntimeError):
                async with engine.transaction() as tx:
                    rolled_back = await tx.start("counted", 1)
                    raise RuntimeError("roll back")
            async with engine.transaction() as tx:
                committed = await tx.start("counted", 2)
            again = await engine.start("counted", 3, run_id=committed.run_id)  # idempotent: keeps its first trace
            rows = await engine.db.fetch("SELECT run_id, traceparent, tracestate FROM pgflow_trio.run_traces")
    assert again.existed
    assert [r["run_id"] for r in rows] == [committed.run_id]
    assert rolled_back.run_id != committed.run_id
    starts = _by_name(_as_json(spans), "start counted")
    assert [s["attributes"]["pgflow.run_id"] for s in starts] == [
        str(rolled_back.run_id),
        str(committed.run_id),
        str(committed.run_id),
    ]
    assert starts[2]["attributes"]["pgflow.run_existed"] is True
    assert rows[0]["traceparent"].split("-")[2] == starts[1]["context"]["span_id"][2:]


async def test_tracing_off_stores_no_trace_and_makes_no_span(dsn: str, spans: InMemorySpanExporter) -> None:
    from . import flows

    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            await engine.upsert_flow(flows.Counted)
            await engine.start("counted", 1)
            assert await engine.db.fetchval("SELECT count(*) FROM pgflow_trio.run_traces") == 0
    assert spans.get_finished_spans() == ()


async def test_a_failed_start_records_its_error_on_the_span(dsn: str, spans: InMemorySpanExporter) -> None:
    from pgflow_trio import FlowNotFound

    with trio.fail_after(30):
        async with open_engine(dsn, otel=True) as engine:
            with pytest.raises(FlowNotFound):
                await engine.start("no_such_flow", {})
    [start] = _by_name(_as_json(spans), "start no_such_flow")
    assert start["status"]["status_code"] == "ERROR"
    assert start["events"][0]["attributes"]["exception.type"] == "pgflow_trio.FlowNotFound"


def test_without_the_api_turning_otel_on_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)  # makes `import opentelemetry.trace` fail
    with pytest.raises(ConfigurationError, match=r"pip install 'pgflow-trio\[otel\]'"):
        WorkerOptions(otel=True)
    from pgflow_trio._client._engine import EngineOptions

    with pytest.raises(ConfigurationError, match=r"engine option otel needs the OpenTelemetry API"):
        EngineOptions(otel=True)
    WorkerOptions()  # off by default, and off needs nothing


def test_without_prometheus_client_a_metrics_port_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'pgflow-trio\[prometheus\]'"):
        WorkerOptions(metrics_port=9464)


def test_the_worker_command_refuses_otel_without_the_api(tmp_path: Path) -> None:
    """`worker --otel` with the API absent: one `error:` line naming the extra, exit 2."""
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('opentelemetry is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    done = subprocess.run(
        [sys.executable, "-m", "pgflow_trio", "worker", "tests/flows.py:Counted", "--otel"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'pgflow-trio[otel]'" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_rerun_is_traced_like_a_start(dsn: str, spans: InMemorySpanExporter) -> None:
    from . import flows

    with trio.fail_after(30):
        async with open_engine(dsn, otel=True) as engine:
            await engine.upsert_flow(flows.Counted)
            first = await engine.start("counted", 1)
            again = await engine.rerun(first.run_id)
            stored = await engine.db.fetchval(
                "SELECT traceparent FROM pgflow_trio.run_traces WHERE run_id = $1", again.run_id
            )
    starts = _by_name(_as_json(spans), "start counted")
    assert [s["attributes"]["pgflow.run_id"] for s in starts] == [str(first.run_id), str(again.run_id)]
    assert starts[1]["attributes"]["messaging.destination.name"] == "counted"
    assert stored.split("-")[2] == starts[1]["context"]["span_id"][2:]


async def test_a_handler_cancelled_with_its_run_is_not_an_error(dsn: str, spans: InMemorySpanExporter) -> None:
    from . import otel_targets

    otel_targets.entered = trio.Event()
    with trio.fail_after(30):
        async with open_engine(dsn, otel=True) as engine, trio.open_nursery() as nursery:
            await nursery.start(engine.serve, otel_targets.Hold)  # no options: the engine's otel=True applies
            handle = await engine.enqueue(otel_targets.Hold, 1)
            await otel_targets.entered.wait()
            await engine.cancel_run(handle.run_id, reason="test")
            await eventually(
                lambda: trio.to_thread.run_sync(lambda: bool(_by_name(_as_json(spans), "process otel_hold.perform")))
            )
            nursery.cancel_scope.cancel()
    local = _as_json(spans)
    [start] = _by_name(local, "start otel_hold")
    [task] = _by_name(local, "process otel_hold.perform")
    assert task["parent_id"] == start["context"]["span_id"]
    assert task["context"]["trace_id"] == start["context"]["trace_id"]
    assert task["attributes"]["pgflow.outcome"] == "cancelled"
    assert task["status"]["status_code"] == "UNSET"
    assert task["events"] == []


def test_a_bad_pgflow_otel_value_is_one_error_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pgflow_trio", "worker", "tests/flows.py:Counted"],
        cwd=ROOT,
        env={**os.environ, "PGFLOW_OTEL": "maybe"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "error: $PGFLOW_OTEL='maybe': expected 1, true, yes, on or 0, false, no, off"


def test_metrics_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="metrics_port must be an integer from 0 to 65535, got 70000"):
        WorkerOptions(metrics_port=70000)
    with pytest.raises(ConfigurationError, match="metrics_host must be a host name or address"):
        WorkerOptions(metrics_host="")
    assert WorkerOptions(metrics_port=0).metrics_host == "127.0.0.1"


async def test_a_handler_with_a_nursery_that_times_out_or_fails_marks_its_span(
    spans: InMemorySpanExporter,
) -> None:
    """Handlers that open nurseries raise exception groups: a Cancelled inside one at the step's timeout is still
    a timeout, and another exception inside one is still the handler's error."""
    from pgflow_trio._observe import _otel
    from pgflow_trio._store._worker_queries import ClaimedTask

    task = ClaimedTask(uuid.uuid4(), "s", 0, 1, None, 1, None)

    async def sleeper() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 10)
            await trio.sleep(10)

    async def failing() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 10)
            raise ValueError("broken inside a nursery")

    with trio.move_on_after(0.05) as deadline, _otel.task_span("f", task, uuid.uuid4(), deadline):
        await sleeper()
    with (
        pytest.raises(BaseExceptionGroup),
        trio.move_on_after(5) as deadline,
        _otel.task_span("f", task, uuid.uuid4(), deadline),
    ):
        await failing()
    timed_out, failed = spans.get_finished_spans()[-2:]
    assert (timed_out.status.status_code.name, timed_out.attributes["pgflow.outcome"]) == ("ERROR", "timeout")
    assert failed.status.status_code.name == "ERROR"
    assert [e.attributes["exception.type"] for e in failed.events] == ["ValueError"]
