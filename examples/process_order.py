"""The order example: validate -> charge -> fulfill, typed, plus a SendEmail job.

python -m pgflow_trio compile examples/process_order.py:ProcessOrder
"""

from __future__ import annotations

import attrs

from pgflow_trio import Context, Flow, Job, step


@attrs.frozen
class OrderInput:
    order_id: int
    amount_cents: int = 100


@attrs.frozen
class ValidOrder:
    order_id: int
    amount_cents: int
    valid: bool


@attrs.frozen
class Payment:
    order_id: int
    charged: bool
    amount_cents: int


@attrs.frozen
class Fulfillment:
    order_id: int
    fulfilled: bool


class ProcessOrder(Flow[OrderInput, Fulfillment], slug="process_order", max_attempts=3):
    """Validate an order, charge for it, then fulfil it."""

    @step
    async def validate(self, order: OrderInput) -> ValidOrder:
        return ValidOrder(order.order_id, order.amount_cents, valid=order.amount_cents > 0)

    @step(timeout=30)
    async def charge(self, order: ValidOrder, ctx: Context) -> Payment:
        if not order.valid:
            raise ValueError(f"order {order.order_id} is not valid")
        return Payment(order.order_id, charged=True, amount_cents=order.amount_cents)

    @step
    async def fulfill(self, payment: Payment) -> Fulfillment:
        return Fulfillment(payment.order_id, fulfilled=payment.charged)


@attrs.frozen
class Email:
    to: str
    subject: str
    body: str = ""


class SendEmail(Job[Email, None], queue="send_email", max_attempts=5, base_delay=10, timeout=120):
    """Send one email (here: just record it)."""

    async def perform(self, email: Email, ctx: Context) -> None:
        print(f"to={email.to} subject={email.subject!r} attempt={ctx.attempt}")
