"""Checked by mypy (tests/test_typing.py), never imported. Every `type: ignore[code]` marks an error mypy must
report (and `# says: text` a part of its message): with warn_unused_ignores, a typing regression that lets the error
through fails the check."""

from __future__ import annotations

from typing import Any, assert_type

import attrs

from pgflow_trio import (
    JSON,
    Context,
    Engine,
    Flow,
    Job,
    RunHandle,
    map_step,
    needs,
    needs_all,
    needs_input,
    run_inline,
    step,
)


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
    async def validate(self, order: OrderInput, ctx: Context[OrderInput]) -> Valid:
        assert_type(ctx.flow_input, OrderInput)
        _ = ctx.flow_input.missing  # type: ignore[attr-defined]
        return Valid(order.order_id)

    @step
    async def bill(self, ctx: Context, valid: Valid = needs(validate)) -> Receipt:
        assert_type(ctx.flow_input, Any)  # a bare Context is Context[Any]
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

    @map_step(timeout=5)
    async def doubled(self, square: int) -> int:
        return square * 2

    @step
    async def total(self, squares: list[int] = needs_all(square)) -> int:
        return sum(squares)

    @step
    async def both(self, doubled: list[int], total: int) -> list[int]:
        return [*doubled, total]


class WrongPins(Flow[list[int], int]):
    @map_step
    async def square(self, n: int = needs_input()) -> int:
        return n * n

    @step
    async def total(self, squares: list[int] = needs_all(square)) -> int:
        return sum(squares)

    @step
    async def one(self, squares: list[int] = needs(square)) -> int:  # type: ignore[arg-type]  # says: "MapStep[
        return 1

    @step
    async def many(self, total: list[int] = needs_all(total)) -> int:  # type: ignore[arg-type]  # says: "MapStep[
        return 1


class Notify(Job[OrderInput, int]):
    async def perform(self, order: OrderInput, ctx: Context[OrderInput]) -> int:
        return ctx.flow_input.order_id


@step  # type: ignore[type-var]
def not_async(self: object) -> int:
    return 1


@map_step  # type: ignore[arg-type]
def not_async_map(self: object, n: int) -> int:
    return n


async def steps_are_methods(squares: Squares, checkout: Checkout, ctx: Context[OrderInput]) -> None:
    assert_type(await squares.square(3), int)
    assert_type(await squares.total([1, 4]), int)
    await squares.square("3")  # type: ignore[arg-type]
    assert_type(await checkout.bill(ctx, Valid(1)), Receipt)
    assert_type(await Checkout.validate(checkout, OrderInput(1), ctx), Valid)


async def usage() -> None:
    receipt = await run_inline(Checkout, OrderInput(1))
    assert_type(receipt, Receipt)
    total = await run_inline(Squares, [1, 2, 3])
    assert_type(total, int)
    assert_type(await run_inline(Squares(), input=[1]), int)
    sent = await run_inline(Notify, OrderInput(2))
    assert_type(sent, int)
    # A wrong input is reported against the flow's input type.
    await run_inline(Checkout, Valid(1))  # type: ignore[arg-type]  # says: type "Valid"; expected "OrderInput"
    await run_inline(Squares, ["a"])  # type: ignore[list-item]  # says: has incompatible type "str"; expected "int"
    await run_inline(Notify, 3)  # type: ignore[arg-type]  # says: type "int"; expected "OrderInput"
    await run_inline(Notify)  # type: ignore[call-arg]
    await run_inline("notify", {})  # type: ignore[arg-type]


async def engine_usage(engine: Engine) -> None:
    handle = await engine.start(Checkout, OrderInput(1))
    assert_type(handle, RunHandle[Receipt])
    assert_type(await handle.result(timeout=5), Receipt)
    job = await engine.enqueue(Notify, OrderInput(2), delay=10)
    assert_type(await job.result(), int)
    untyped = await engine.start("checkout", {"order_id": 1})
    assert_type(untyped, RunHandle[JSON])
    await engine.start(Checkout, Valid(1))  # type: ignore[misc]
    await engine.enqueue(Notify, "not an order")  # type: ignore[misc]
