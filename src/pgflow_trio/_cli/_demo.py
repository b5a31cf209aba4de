"""`python -m pgflow_trio demo`: the order example with a map step, end to end on the embedded PostgreSQL.

Installs the schema when needed, runs workers in this process, starts a batch of runs, shows progress and each
run's outcome, and ends with `N/N runs completed`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import attrs
import trio

from pgflow_trio._client._admin import install_schema
from pgflow_trio._client._engine import RunHandle, open_engine
from pgflow_trio._definitions._context import Context
from pgflow_trio._definitions._flow import Flow, map_step, step
from pgflow_trio._exceptions import RunFailed
from pgflow_trio._runtime import WorkerOptions
from pgflow_trio._store._dsn import resolve_dsn
from pgflow_trio._store._runs import retried_steps, runs_awaiting_retry


@attrs.frozen
class Item:
    sku: str
    quantity: int
    unit_cents: int


@attrs.frozen
class Order:
    order_id: int
    items: list[Item]


@attrs.frozen
class PricedLine:
    sku: str
    cents: int


@attrs.frozen
class Charge:
    order_id: int
    total_cents: int


@attrs.frozen
class Shipment:
    order_id: int
    lines: int
    total_cents: int


class DemoOrder(Flow[Order, Shipment], slug="pgflow_trio_demo_order", max_attempts=3, base_delay=1):
    """validate -> price each line (map) -> charge -> fulfill."""

    @step
    async def validate(self, order: Order) -> list[Item]:
        if not order.items:
            raise ValueError(f"order {order.order_id} has no items")
        return order.items

    @map_step
    async def price(self, item: Item, ctx: Context) -> PricedLine:
        await trio.sleep(random.uniform(0.01, 0.05))  # pretend to call a pricing service
        return PricedLine(item.sku, item.quantity * item.unit_cents)

    @step
    async def charge(self, order: Order, price: list[PricedLine], ctx: Context) -> Charge:
        if ctx.attempt == 1 and order.order_id % 7 == 0:
            raise ConnectionError("payment provider timed out")  # retried by pgflow
        return Charge(order.order_id, sum(line.cents for line in price))

    @step
    async def fulfill(self, charge: Charge, price: list[PricedLine]) -> Shipment:
        return Shipment(charge.order_id, len(price), charge.total_cents)


def _order(order_id: int) -> Order:
    rng = random.Random(order_id)
    items = [
        Item(f"sku-{rng.randint(100, 999)}", rng.randint(1, 3), rng.randint(100, 5000))
        for _ in range(rng.randint(1, 4))
    ]
    return Order(order_id, items)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The demo tells its own story: no log lines from the library (the simulated failures are expected)."""
    logger = logging.getLogger("pgflow_trio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def run_demo(
    runs: int = 20,
    dsn: str | None = None,
    data_dir: Path | None = None,
    out: TextIO = sys.stdout,
    connect_timeout: float | None = None,
    dashboard_port: int | None = None,
) -> int:
    """Run the demo; returns the number of runs that completed. With `dashboard_port`, the dashboard is served on
    127.0.0.1 (its URL printed first, before the runs start, so they can be watched moving) and stays open after
    the runs until SIGINT or SIGTERM."""
    with _quiet_logs():
        return await _demo(runs, dsn, data_dir, out, connect_timeout, dashboard_port)


async def _demo(
    runs: int,
    dsn: str | None,
    data_dir: Path | None,
    out: TextIO,
    connect_timeout: float | None,
    dashboard_port: int | None,
) -> int:
    resolved = await resolve_dsn(dsn, data_dir=data_dir)
    print("installing the schema (if needed)...", file=out)
    await install_schema(resolved, connect_timeout=connect_timeout)
    async with open_engine(resolved, connect_timeout=connect_timeout) as engine, trio.open_nursery() as nursery:
        url = None
        if dashboard_port is not None:
            from pgflow_trio._dashboard import serve_dashboard

            url = await nursery.start(functools.partial(serve_dashboard, engine, port=dashboard_port))
            print(f"dashboard at {url}", file=out, flush=True)
        outcome = await engine.upsert_flow(DemoOrder)
        if outcome != "unchanged":
            print(f"flow {DemoOrder.__pgflow__.slug}: {outcome}", file=out)
        options = WorkerOptions(concurrency=16, scheduler=False)
        group = await nursery.start(functools.partial(engine.serve, DemoOrder, options=options))
        print(
            f"starting {runs} runs of {DemoOrder.__pgflow__.slug} (validate -> price[map] -> charge -> fulfill); "
            "every 7th order's first charge fails and is retried after pgflow's backoff",
            file=out,
        )
        handles: list[tuple[int, RunHandle[Shipment]]] = []
        for order_id in range(1, runs + 1):
            handles.append((order_id, await engine.start(DemoOrder, _order(order_id))))
        run_ids = [handle.run_id for _, handle in handles]
        done = 0
        outcomes: dict[int, str] = {}

        async def wait_one(order_id: int, handle: RunHandle[Shipment]) -> None:
            nonlocal done
            try:
                shipment = await handle.result(timeout=120)
                outcomes[order_id] = f"completed, {shipment.lines} lines, {shipment.total_cents / 100:.2f} EUR"
                done += 1
            except RunFailed as exc:
                outcomes[order_id] = f"FAILED at {exc.step_slug}: {exc.error}"

        async def progress() -> None:
            shown = ""
            while True:
                retrying = await engine.db.run(functools.partial(runs_awaiting_retry, run_ids=run_ids))
                line = f"  progress: {done}/{runs} completed"
                if retrying:
                    line += f", {retrying} waiting to retry after a failure (backoff)"
                if line != shown:
                    print(line, file=out, flush=True)
                    shown = line
                await trio.sleep(0.2)

        async with trio.open_nursery() as waiting:
            reporter = trio.CancelScope()

            async def report() -> None:
                with reporter:
                    await progress()

            waiting.start_soon(report)
            async with trio.open_nursery() as results:
                for order_id, handle in handles:
                    results.start_soon(wait_one, order_id, handle)
            reporter.cancel()
        retried: dict[uuid.UUID, list[str]] = {}
        for retry in await engine.db.run(functools.partial(retried_steps, run_ids=run_ids)):
            retried.setdefault(retry.run_id, []).append(f"{retry.step_slug} retried: {retry.attempts} attempts")
        for order_id, handle in handles:
            note = "".join(f"  ({note})" for note in retried.get(handle.run_id, []))
            print(f"  order {order_id:3}: {outcomes[order_id]}{note}", file=out)
        group.stop()
        print(f"{done}/{runs} runs completed", file=out, flush=True)
        if url is not None:
            print(f"the dashboard stays open at {url}; Ctrl-C ends it", file=out, flush=True)
            await until_signalled()
            nursery.cancel_scope.cancel()
    return done


async def until_signalled() -> None:
    """Return on SIGINT or SIGTERM (the process then shuts down cleanly instead of dying)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return
