"""The metrics in Prometheus' text format on an HTTP port of the worker process, with `prometheus-client`
(imported only when a metrics port is asked for).

Each server has a registry of its own: task counters and histograms fed by the process's task events, and a
collector that reads the queue gauges the refresher last fetched. The HTTP server runs in prometheus-client's
thread; nothing it does touches the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pgflow_trio._exceptions import ConfigurationError
from pgflow_trio._observe._metrics import GAUGES, TaskRecorder, subscribe_recorder

log = logging.getLogger("pgflow_trio.metrics")

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class PrometheusRecorder(TaskRecorder):
    """Task metrics as prometheus-client counters and histograms in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("flow", "step")
        self._completed = Counter("pgflow_tasks_completed", "task attempts that completed", labels, registry=registry)
        self._failed = Counter("pgflow_tasks_failed", "task attempts whose handler raised", labels, registry=registry)
        self._timed_out = Counter(
            "pgflow_tasks_timed_out", "task attempts cancelled at their step's timeout", labels, registry=registry
        )
        self._duration = Histogram(
            "pgflow_task_duration_seconds",
            "how long handlers ran, by outcome",
            (*labels, "outcome"),
            registry=registry,
            buckets=_BUCKETS,
        )
        self._queue_wait = Histogram(
            "pgflow_task_queue_wait_seconds",
            "from a task's message being enqueued to its handler starting",
            labels,
            registry=registry,
            buckets=_BUCKETS,
        )

    def completed(self, flow: str, step: str) -> None:
        self._completed.labels(flow, step).inc()

    def failed(self, flow: str, step: str) -> None:
        self._failed.labels(flow, step).inc()

    def timed_out(self, flow: str, step: str) -> None:
        self._timed_out.labels(flow, step).inc()

    def duration(self, flow: str, step: str, outcome: str, seconds: float) -> None:
        self._duration.labels(flow, step, outcome).observe(seconds)

    def queue_wait(self, flow: str, step: str, seconds: float) -> None:
        self._queue_wait.labels(flow, step).observe(seconds)


class GaugeCollector(Collector):
    """The queue gauges, read at scrape time from the values the refresher last fetched."""

    def collect(self) -> Iterator[Metric]:
        queues = GAUGES.queues
        depth = GaugeMetricFamily("pgflow_queue_depth", "messages ready to be read, per queue", labels=["queue"])
        oldest = GaugeMetricFamily(
            "pgflow_queue_oldest_message_age_seconds",
            "how long the oldest ready message has waited, per queue",
            labels=["queue"],
        )
        live = GaugeMetricFamily("pgflow_workers_live", "workers heartbeating, per queue", labels=["queue"])
        for q in queues:
            depth.add_metric([q.queue], q.depth)
            oldest.add_metric([q.queue], q.oldest_age)
            live.add_metric([q.queue], q.live_workers)
        yield from (depth, oldest, live)


async def serve_prometheus(
    host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `/metrics` on host:port until cancelled; `task_status.started(port)` with the port bound (useful
    with port 0). A port that cannot be bound is a ConfigurationError."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(GaugeCollector())
    recorder = PrometheusRecorder(registry)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): choose another --metrics-port "
            "($PGFLOW_METRICS_PORT) or --metrics-host"
        ) from None
    bound = int(server.server_address[1])
    subscription = subscribe_recorder(recorder)
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, bound)
    try:
        task_status.started(bound)
        await trio.sleep_forever()
    finally:
        subscription.close()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.shutdown)
            server.server_close()
            await trio.to_thread.run_sync(thread.join, 5.0)
