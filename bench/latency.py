"""Start-to-handler latency: from calling pgflow.start_flow to the handler being entered, with an idle worker.

    python bench/latency.py [--dsn DSN] [--runs 200]

Runs in one process on one database: for each signal mode a worker serves a one-step job, and runs are started
one at a time at random intervals (so the worker is idle, as it is when latency matters).
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import time

import trio

from pgflow_trio import Context, Job, WorkerGroup, WorkerOptions, serve
from pgflow_trio._store import open_database

from ._common import bench_database, percentile

entered: dict[int, float] = {}
arrived = trio.Event()


class Ping(Job[int, None], queue="bench_ping"):
    async def perform(self, n: int, ctx: Context) -> None:
        entered[n] = time.perf_counter()
        arrived.set()


async def measure(dsn: str, signal: str, runs: int) -> list[float]:
    global arrived
    options = WorkerOptions(signal=signal, concurrency=4)  # type: ignore[arg-type]
    samples = []
    async with open_database(dsn, max_size=2) as db, trio.open_nursery() as nursery:
        group: WorkerGroup = await nursery.start(functools.partial(serve, Ping, dsn=dsn, options=options))
        await trio.sleep(1.5)  # let the poller settle into its idle interval
        for n in range(runs):
            arrived = trio.Event()
            started = time.perf_counter()
            await db.execute("SELECT pgflow.start_flow('bench_ping', $1::jsonb)", str(n))
            with trio.fail_after(30):
                await arrived.wait()
            samples.append(entered[n] - started)
            await trio.sleep(random.uniform(0.02, 0.3))
        group.stop()
    return samples


async def main(dsn: str | None, runs: int) -> None:
    async with bench_database(dsn) as url:
        print(f"start-to-handler latency, {runs} runs each, idle worker (ms)")
        for signal in ("poll", "notify"):
            samples = await measure(url, signal, runs)
            ms = [s * 1000 for s in samples]
            print(
                f"  {signal:6}  p50 {statistics.median(ms):7.1f}  p99 {percentile(ms, 99):7.1f}  "
                f"min {min(ms):6.1f}  max {max(ms):7.1f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    trio.run(main, args.dsn, args.runs)
