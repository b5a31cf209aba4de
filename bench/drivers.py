"""The two database drivers side by side, in one run on one database, as ratios to the trio-asyncio driver.

    python -m bench.drivers [--dsn DSN] [--calls 3000] [--runs 3000] [--rounds 2]

(a) crossing latency: `SELECT 1` from Trio, one call at a time on a one-connection pool (p50, p99, mean);
(b) crossings per second with 10 Trio tasks sharing a ten-connection pool;
(c) single-step job throughput, end to end, with 1 and 2 workers (as `bench.run` measures it).

The drivers alternate within each round and each figure is the best of `--rounds`, so drift on a shared machine
hurts both alike. Without trio-asyncio only the thread driver is measured.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

from pgflow_trio._store import open_database
from pgflow_trio._store._driver import trio_asyncio_problem

from ._common import bench_database, percentile
from .run import BenchJob, throughput

BASE = "trio-asyncio"


@contextmanager
def _driver_env(driver: str) -> Iterator[None]:
    """Workers open their own database: PGFLOW_DRIVER is how they get the driver under test."""
    saved = os.environ.get("PGFLOW_DRIVER")
    os.environ["PGFLOW_DRIVER"] = driver
    try:
        yield
    finally:
        if saved is None:
            del os.environ["PGFLOW_DRIVER"]
        else:
            os.environ["PGFLOW_DRIVER"] = saved


async def latency(dsn: str, driver: str, calls: int) -> dict[str, float]:
    """Microseconds per `SELECT 1` crossing: p50, p99 and mean."""
    samples: list[float] = []
    async with open_database(dsn, max_size=1, driver=driver) as db:
        for _ in range(200):  # warm up: connection, prepared statement cache
            await db.fetchval("SELECT 1")
        for _ in range(calls):
            started = time.perf_counter()
            await db.fetchval("SELECT 1")
            samples.append((time.perf_counter() - started) * 1e6)
    return {"p50": statistics.median(samples), "p99": percentile(samples, 99), "mean": statistics.fmean(samples)}


async def concurrent_rate(dsn: str, driver: str, calls: int, tasks: int = 10) -> float:
    """Crossings per second with `tasks` Trio tasks each making `calls // tasks` calls."""
    async with open_database(dsn, min_size=tasks, max_size=tasks, driver=driver) as db:

        async def client() -> None:
            for _ in range(calls // tasks):
                await db.fetchval("SELECT 1")

        async with trio.open_nursery() as nursery:  # warm up every connection
            for _ in range(tasks):
                nursery.start_soon(db.fetchval, "SELECT 1")
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(client)
        return calls // tasks * tasks / (time.perf_counter() - started)


async def job_rate(dsn: str, runs: int, workers: int, driver: str) -> float:
    """Runs/s of single-step jobs (`bench.run.throughput`); its workers take `driver` from PGFLOW_DRIVER."""
    return await throughput(dsn, BenchJob, "bench_job", runs, workers)


async def _best(
    drivers: list[str], rounds: int, measure: Callable[[str], Awaitable[float]], *, higher_is_better: bool
) -> dict[str, float]:
    results: dict[str, list[float]] = {d: [] for d in drivers}
    for _ in range(rounds):
        for driver in drivers:
            with _driver_env(driver):
                results[driver].append(await measure(driver))
    pick = max if higher_is_better else min
    return {d: pick(values) for d, values in results.items()}


def _row(label: str, unit: str, figures: dict[str, float], drivers: list[str]) -> str:
    cells = "".join(f"{figures[d]:12.1f}" for d in drivers)
    ratio = f"   thread/{BASE} {figures['thread'] / figures[BASE]:5.2f}" if BASE in figures else ""
    return f"    {label:<28}{cells}  {unit}{ratio}"


async def main(dsn: str | None, calls: int, runs: int, rounds: int) -> None:
    drivers = ["thread"] if trio_asyncio_problem() else [BASE, "thread"]
    async with bench_database(dsn) as url:
        print(f"pgflow_trio database drivers ({calls} crossings, {runs} runs, best of {rounds} rounds)")
        if trio_asyncio_problem():
            print(f"    ({trio_asyncio_problem()}: thread only)")
        print(f"    {'':<28}" + "".join(f"{d:>12}" for d in drivers))
        print("(a) crossing latency, SELECT 1, one at a time")
        stats: dict[str, dict[str, list[float]]] = {d: {"p50": [], "p99": [], "mean": []} for d in drivers}
        for _ in range(rounds):
            for driver in drivers:
                for key, value in (await latency(url, driver, calls)).items():
                    stats[driver][key].append(value)
        for key in ("p50", "p99", "mean"):
            print(_row(key, "us", {d: min(stats[d][key]) for d in drivers}, drivers))
        print("(b) crossings/s, 10 Trio tasks, 10 connections")
        rate = await _best(drivers, rounds, lambda d: concurrent_rate(url, d, calls), higher_is_better=True)
        print(_row("SELECT 1", "calls/s", rate, drivers))
        print("(c) single-step job, end to end (concurrency 10, batch 10, notify)")
        for workers in (1, 2):
            jobs = await _best(drivers, rounds, functools.partial(job_rate, url, runs, workers), higher_is_better=True)
            print(_row(f"{workers} worker(s)", "runs/s", jobs, drivers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    trio.run(main, args.dsn, args.calls, args.runs, args.rounds)
