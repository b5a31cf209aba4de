"""Cancel latency: from calling `engine.cancel_run` (one transaction) to the running handler of that run being
cancelled in its worker.

    python -m bench.cancel [--dsn DSN] [--runs 100]

One process, one database: for each signal mode a worker serves a one-step job whose handler waits until cancelled;
each sample starts a run, waits for its handler to be entered, cancels the run and times the handler's
cancellation. With signal=notify the cancellation arrives as a notification; with signal=poll the worker's run
check (every `run_check_interval`, 0.5 s by default) finds it.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import trio

from pgflow_trio import Context, Job, WorkerGroup, WorkerOptions, open_engine, serve

from ._common import bench_database, percentile

entered: dict[int, trio.Event] = {}
cancelled_at: dict[int, float] = {}
cancelled: dict[int, trio.Event] = {}


class Hold(Job[int, None], queue="bench_hold", timeout=600):
    async def perform(self, n: int, ctx: Context) -> None:
        entered[n].set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled_at[n] = time.perf_counter()
            cancelled[n].set()
            raise


async def measure(dsn: str, signal: str, runs: int) -> list[float]:
    options = WorkerOptions(signal=signal)  # type: ignore[arg-type]
    samples = []
    async with open_engine(dsn) as engine, trio.open_nursery() as nursery:
        group: WorkerGroup = await nursery.start(functools.partial(serve, Hold, dsn=dsn, options=options))
        for n in range(runs):
            entered[n], cancelled[n] = trio.Event(), trio.Event()
            handle = await engine.enqueue(Hold, n)
            with trio.fail_after(30):
                await entered[n].wait()
                called = time.perf_counter()
                await engine.cancel_run(handle.run_id, reason="bench")
                await cancelled[n].wait()
            samples.append(cancelled_at[n] - called)
        group.stop()
    return samples


async def main(dsn: str | None, runs: int) -> None:
    async with bench_database(dsn) as url:
        print(f"cancel latency, {runs} runs each: cancel_run called -> handler cancelled (ms)")
        for signal in ("notify", "poll"):
            ms = [s * 1000 for s in await measure(url, signal, runs)]
            print(
                f"  {signal:6}  p50 {statistics.median(ms):7.1f}  p99 {percentile(ms, 99):7.1f}  "
                f"min {min(ms):6.1f}  max {max(ms):7.1f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    trio.run(main, args.dsn, args.runs)
