"""Checked by mypy (tests/test_worker.py), never imported. Every `type: ignore[code]` marks an error mypy must
report: with warn_unused_ignores, a typing regression that lets the error through fails the check."""

from __future__ import annotations

from typing import Any

import attrs

from pgflow_trio import Context, Flow, Job, ServeTarget, flow_from_spec, serve, step
from pgflow_trio._runtime import served


@attrs.frozen
class Order:
    order_id: int


class Process(Flow[Order, int]):
    @step
    async def total(self, order: Order) -> int:
        return order.order_id


class Mail(Job[Order, None]):
    async def perform(self, order: Order, ctx: Context) -> None:
        return None


async def raw(task_input: Any, ctx: Context) -> int:
    return 1


runtime = flow_from_spec({"slug": "runtime", "steps": [{"slug": "a"}]})


async def accepted() -> None:
    await serve(Process, Process(), Mail, Mail(), (runtime, {"a": raw}), served(Process))
    targets: list[ServeTarget] = [Process, (runtime, {"a": raw})]
    await serve(*targets)


async def rejected() -> None:
    await serve(Order, "x", 42)  # type: ignore[arg-type]
    served(Order(1))  # type: ignore[arg-type]
    await serve((runtime, {"a": 1}))  # type: ignore[dict-item]
