"""Encoding one step output on the worker's path, from the handler's return value to the JSON text sent to
complete_task: the current path against the former one (unstructure, encode to prove it is JSON, encode again).

    python -m bench.codec [--items 20] [--rounds 7] [--number 2000]

The output is a realistic record: an attrs class holding a list of `--items` nested attrs records. Prints the
best time per encode of each path (the minimum over rounds in which the paths take turns, so other load on the
machine counts least) and their ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import timeit
from collections.abc import Callable
from typing import Any

import attrs

from pgflow_trio import Flow, definition_of, step
from pgflow_trio._codec import _converter
from pgflow_trio._definitions._values import encode_output


@attrs.frozen
class Money:
    cents: int
    currency: str = "EUR"


@attrs.frozen
class Line:
    sku: str
    title: str
    quantity: int
    unit_price: Money
    discount: float
    tags: list[str]
    shipped_at: str | None = None


@attrs.frozen
class Invoice:
    invoice_id: str
    customer: str
    issued_on: str
    lines: list[Line]
    total: Money
    notes: dict[str, str] = attrs.Factory(dict)


class Billing(Flow[str, Invoice]):
    @step
    async def invoice(self, customer: str) -> Invoice:
        raise NotImplementedError


def invoice(items: int) -> Invoice:
    lines = [
        Line(
            sku=f"SKU-{i:05d}",
            title=f"Item number {i} — with a longer title",
            quantity=i % 7 + 1,
            unit_price=Money(199 + 37 * i),
            discount=0.05 * (i % 3),
            tags=["catalogue", f"shelf-{i % 4}"],
            shipped_at=datetime.datetime(2025, 1, 1 + i % 28, 12).isoformat() if i % 2 else None,
        )
        for i in range(items)
    ]
    total = Money(sum(line.unit_price.cents * line.quantity for line in lines))
    return Invoice("INV-2025-000123", "ACME Corp", "2025-01-31", lines, total, {"po": "4711", "terms": "30 days"})


def former_path(value: Any) -> str:
    """What the worker did before: the converter's unstructure, json.dumps to prove the data is JSON, then
    json.dumps again for complete_task (same settings both times)."""
    data = _converter.unstructure(value)
    json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def best_of_each(paths: list[Callable[[], object]], rounds: int, number: int) -> list[float]:
    """Seconds per call of each path, the minimum over `rounds`; the paths take turns in each round, so a change
    in the machine's load affects them alike."""
    timings: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for path, times in zip(paths, timings, strict=True):
            times.append(timeit.timeit(path, number=number) / number)
    return [min(times) for times in timings]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    flow = definition_of(Billing)
    bill = flow.step("invoice")
    value = invoice(args.items)

    def current_path() -> str:
        return encode_output(flow, bill, value)

    assert former_path(value) == current_path()
    size = len(former_path(value).encode())
    before, after = best_of_each([lambda: former_path(value), current_path], args.rounds, args.number)
    print(f"one output: an Invoice with {args.items} nested lines, {size} bytes of JSON")
    print(f"former path   {before * 1e6:8.1f} us per output")
    print(f"current path  {after * 1e6:8.1f} us per output")
    print(f"ratio         {before / after:8.2f}x (former / current)")


if __name__ == "__main__":
    main()
