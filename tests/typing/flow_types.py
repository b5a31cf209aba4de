"""Checked by mypy (tests/test_typing.py), never imported. Every `type: ignore[code]` marks an error mypy must
report: with warn_unused_ignores, a typing regression that lets the error through fails the check."""

from __future__ import annotations

from typing import Any, assert_type

import attrs

from pgflow_trio import Context, Engine, Flow, Job, RunHandle, map_step, needs, needs_all, run_inline, step


@attrs.frozen
class OrderInput:
    order_id: int


@attrs.frozen
class Valid:
    order_id: int


@attrs.frozen
class Receipt:
    total: int


class Checkout(Flow[OrderInput, Receipt]):
    @step
    async def validate(self, order: OrderInput) -> Valid:
        return Valid(order.order_id)

    @step
    async def bill(self, valid: Valid = needs(validate)) -> Receipt:
        return Receipt(valid.order_id)


class Mismatched(Flow[OrderInput, Receipt]):
    @step
    async def validate(self, order: OrderInput) -> Valid:
        return Valid(order.order_id)

    @step
    async def bill(self, valid: Receipt = needs(validate)) -> Receipt:  # type: ignore[assignment]
        return valid


class Squares(Flow[list[int], int]):
    @map_step
    async def square(self, n: int) -> int:
        return n * n

    @step
    async def total(self, squares: list[int] = needs_all(square)) -> int:
        return sum(squares)


class Notify(Job[OrderInput, int]):
    async def perform(self, order: OrderInput, ctx: Context) -> int:
        return order.order_id


@step  # type: ignore[type-var]
def not_async(self: object) -> int:
    return 1


async def usage() -> None:
    receipt = await run_inline(Checkout, OrderInput(1))
    assert_type(receipt, Receipt)
    total = await run_inline(Squares, [1, 2, 3])
    assert_type(total, int)
    sent = await run_inline(Notify, OrderInput(2))
    assert_type(sent, int)
    # A wrong input type: mypy cannot solve In for both arguments and reports it as [misc].
    await run_inline(Checkout, Valid(1))  # type: ignore[misc]
    await run_inline(Squares, ["a"])  # type: ignore[misc]
    await run_inline(Notify, 3)  # type: ignore[misc]


async def engine_usage(engine: Engine) -> None:
    handle = await engine.start(Checkout, OrderInput(1))
    assert_type(handle, RunHandle[Receipt])
    assert_type(await handle.result(timeout=5), Receipt)
    job = await engine.enqueue(Notify, OrderInput(2), delay=10)
    assert_type(await job.result(), int)
    untyped = await engine.start("checkout", {"order_id": 1})
    assert_type(untyped, RunHandle[Any])
    await engine.start(Checkout, Valid(1))  # type: ignore[misc]
    await engine.enqueue(Notify, "not an order")  # type: ignore[misc]
