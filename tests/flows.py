"""Flows the worker tests run (module level, so a worker subprocess can import them by file path too)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import attrs
import trio

from pgflow_trio import Context, Flow, Job, map_step, needs_input, step

# In-process observations the tests read.
calls: Counter[tuple[str, int]] = Counter()
active: Counter[tuple[str, str, int]] = Counter()
overlaps: list[tuple[str, str, int]] = []
seen_attempts: list[int] = []


def reset() -> None:
    calls.clear()
    active.clear()
    overlaps.clear()
    seen_attempts.clear()


class FanOut(Flow[list[int], dict[str, Any]], slug="fan_out"):
    """Root map -> dependent map -> fan-in."""

    @map_step
    async def double(self, n: int) -> int:
        return n * 2

    @map_step
    async def label(self, double: int, ctx: Context) -> str:
        return f"{ctx.task_index}:{double}"

    @step
    async def join(self, label: list[str], double: list[int]) -> dict[str, Any]:
        return {"labels": label, "total": sum(double)}


@attrs.frozen
class Order:
    order_id: int
    fail_times: int = 0


class Flaky(Flow[Order, int], slug="flaky", max_attempts=3, base_delay=1):
    """Fails `fail_times` times, then succeeds."""

    @step
    async def attempt(self, order: Order, ctx: Context) -> int:
        calls[("flaky", order.order_id)] += 1
        seen_attempts.append(ctx.attempt)
        if ctx.attempt <= order.fail_times:
            raise ValueError(f"boom on attempt {ctx.attempt}")
        return ctx.attempt


class Doomed(Flow[Order, int], slug="doomed", max_attempts=2, base_delay=1):
    """Its first step always fails; its second must never run."""

    @step
    async def explode(self, order: Order) -> int:
        calls[("explode", order.order_id)] += 1
        raise RuntimeError("always")

    @step
    async def sibling(self, order: Order) -> str:
        return "sibling ran"

    @step
    async def after(self, explode: int, sibling: str) -> int:
        calls[("after", 0)] += 1
        return explode


class Stuck(Flow[Order, int], slug="stuck", max_attempts=1, timeout=3):
    """Never finishes on its own: the worker cancels it at the 3 s timeout."""

    @step
    async def hang(self, order: Order) -> int:
        calls[("hang", order.order_id)] += 1
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class Counted(Flow[int, int], slug="counted", max_attempts=1):
    """Records overlapping executions of the same task."""

    @step
    async def work(self, n: int, ctx: Context) -> int:
        key = (str(ctx.run_id), ctx.step_slug, ctx.task_index)
        active[key] += 1
        if active[key] > 1:
            overlaps.append(key)
        calls[("counted", n)] += 1
        await trio.sleep(0.01)
        active[key] -= 1
        return n


class Falsy(Flow[int, dict[str, Any]], slug="falsy"):
    @step
    async def zero(self, n: int) -> int:
        return 0

    @step
    async def empty(self, n: int = needs_input()) -> str:
        return ""

    @step
    async def nothing(self, n: int = needs_input()) -> None:
        return None

    @step
    async def no(self, n: int = needs_input()) -> bool:
        return False


class SlowOnce(Flow[str, str], slug="slow_once", max_attempts=3, base_delay=1, timeout=60):
    """The first execution writes its pid to the file named by the input and hangs (for kill and shutdown tests);
    any later execution, which finds the file, returns at once."""

    @step
    async def work(self, marker: str, ctx: Context) -> str:
        seen_attempts.append(ctx.attempt)
        path = trio.Path(marker)
        if not await path.exists():
            await path.write_text(str(os.getpid()))
            await trio.sleep_forever()
        return f"attempt {ctx.attempt}"


class BadOutput(Flow[int, int], slug="bad_output", max_attempts=1):
    @step
    async def lie(self, n: int) -> int:
        return "not an int"  # type: ignore[return-value]


class Broken(Flow[Order, int], slug="broken", max_attempts=1):
    @step
    async def validate(self, order: Order) -> int:
        return order.order_id

    @step
    async def charge(self, validate: int) -> int:
        raise ValueError(f"card declined for order {validate}")


class Echo(Job[dict[str, Any], dict[str, Any]], queue="echo"):
    async def perform(self, payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"echo": payload, "attempt": ctx.attempt}


class Long(Flow[int, int], slug="long_task", max_attempts=1, timeout=10):
    """Runs for `n` seconds (within its 10 s timeout)."""

    @step
    async def work(self, n: int) -> int:
        await trio.sleep(n)
        return n


class MixedCase(Flow[int, int], slug="MixedCase", max_attempts=2, base_delay=1):
    """A slug with capitals: pgmq names its queue table (and so its channels) in lower case. A negative input
    fails the first attempt."""

    @step
    async def work(self, n: int, ctx: Context) -> int:
        seen_attempts.append(ctx.attempt)
        if n < 0 and ctx.attempt == 1:
            raise ValueError("the first attempt fails")
        return abs(n)
