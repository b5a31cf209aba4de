"""What observability costs: single-step job throughput (bench.run's case (a), one worker) with no subscriber, with
a no-op subscriber to every event, with one to every event but run.completed/run.failed (those two ask the worker
for one more statement per report), and with OpenTelemetry on (the SDK installed: a span per task exported to a
dropping exporter, task metrics), as ratios to no subscriber, in one run on one database.

    python -m bench.events [--dsn DSN] [--runs 2000] [--rounds 5]

The configurations alternate within each round (so drift of the machine hits them alike); the ratio of a round is
its rate over that round's no-subscriber rate. Printed: the median rate, and the median and spread (min-max) of
the ratios over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import trio

from pgflow_trio import events

from ._common import bench_database
from .otel import install_sdk
from .run import BenchJob, throughput


def _noop(event: events.Event) -> None:
    return None


@contextmanager
def _subscribed(*kinds: type[events.Event]) -> Iterator[None]:
    with events.subscribe(_noop, *kinds):
        yield


def _all_but_run_ends() -> AbstractContextManager[None]:
    kinds = [k for k in events.event_kinds().values() if k not in (events.RunComplete, events.RunFail)]
    return _subscribed(*kinds)


CONFIGURATIONS: dict[str, tuple[Callable[[], AbstractContextManager[None]], bool]] = {
    "no subscriber": (nullcontext, False),
    "no-op subscriber, every event": (_subscribed, False),
    "no-op subscriber, all but run ends": (_all_but_run_ends, False),
    "OTel SDK enabled (spans and metrics)": (nullcontext, True),
}
"""name -> (what is subscribed while it runs, whether the worker has OpenTelemetry on)"""
BASELINE = "no subscriber"


_CHECKS_PER_TASK = 8
"""`wanted(...)` checks a single-step job's task passes through with no subscriber: poll start and stop (shared by
a batch, counted whole), task start and stop, run completed/failed at the report, and the completer's check."""


def _cost_of_a_check() -> float:
    """Seconds per `wanted(kind)` with no subscriber: what an event costs when nobody listens."""
    from pgflow_trio._observe._events import wanted

    n = 1_000_000
    started = time.perf_counter()
    for _ in range(n):
        wanted(events.TaskStop)
    return (time.perf_counter() - started) / n


async def main(dsn: str | None, runs: int, rounds: int) -> None:
    rates: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    install_sdk()  # set up as an application would; unused while a configuration has OpenTelemetry off
    async with bench_database(dsn) as url:
        await throughput(url, BenchJob, "bench_job", max(200, runs // 10), 1)  # warm up
        for n in range(rounds):
            order = list(CONFIGURATIONS) if n % 2 == 0 else list(reversed(CONFIGURATIONS))
            for name in order:
                subscribed, otel = CONFIGURATIONS[name]
                with subscribed():
                    rates[name].append(await throughput(url, BenchJob, "bench_job", runs, 1, otel=otel))
    print(f"lifecycle events: single-step job throughput, 1 worker, {runs} runs x {rounds} rounds")
    base = rates[BASELINE]
    check = _cost_of_a_check()
    per_task = _CHECKS_PER_TASK * check
    print(
        f"  with no subscriber a task costs {_CHECKS_PER_TASK} `wanted` checks of {check * 1e9:.0f} ns: "
        f"{per_task * 1e6:.2f} us, {per_task * statistics.median(base) * 100:.3f}% of a task at the baseline rate"
    )
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(
            f"  {name:36} {statistics.median(values):7.0f} runs/s   ratio {statistics.median(ratios):5.3f} "
            f"(spread {min(ratios):5.3f}-{max(ratios):5.3f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    trio.run(main, args.dsn, args.runs, args.rounds)
