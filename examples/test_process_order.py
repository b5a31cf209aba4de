"""Tests of process_order.py as you would write them for your own flows.

Needs `pip install 'pgflow-trio[embedded]' pytest pytest-trio` (or PGFLOW_TEST_DSN pointing at a PostgreSQL where
the role may create databases) and `trio_mode = true` in the pytest configuration. The `pgflow_engine` fixture
comes from pgflow_trio's pytest plugin: an engine on a fresh database with the schema, for each test.
"""

from __future__ import annotations

import pytest
from process_order import Email, Fulfillment, OrderInput, ProcessOrder, SendEmail

from pgflow_trio import Engine, RunFailed
from pgflow_trio.testing import drain


async def test_an_order_is_validated_charged_and_fulfilled(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(ProcessOrder)
    handle = await pgflow_engine.start(ProcessOrder, OrderInput(order_id=1, amount_cents=250))

    executed = await drain(pgflow_engine, ProcessOrder)

    assert [(task.step, task.outcome) for task in executed] == [
        ("validate", "completed"),
        ("charge", "completed"),
        ("fulfill", "completed"),
    ]
    assert await handle.result(timeout=10) == Fulfillment(order_id=1, fulfilled=True)


async def test_an_invalid_order_fails_once_its_attempts_are_used_up(pgflow_engine: Engine) -> None:
    await pgflow_engine.upsert_flow(ProcessOrder)
    handle = await pgflow_engine.start(ProcessOrder, OrderInput(order_id=2, amount_cents=0))

    # Retries wait for their backoff; include_delayed=True runs them at once.
    executed = await drain(pgflow_engine, ProcessOrder, include_delayed=True)

    charges = [task for task in executed if task.step == "charge"]
    assert [(task.attempt, task.outcome) for task in charges] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert charges[-1].error == "ValueError: order 2 is not valid"
    with pytest.raises(RunFailed) as failure:
        await handle.result(timeout=10)
    assert failure.value.step_slug == "charge"


async def test_a_delayed_email_is_sent_when_it_is_due(
    pgflow_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    await pgflow_engine.upsert_flow(SendEmail)
    await pgflow_engine.enqueue(SendEmail, Email("a@example.com", "Your order"), delay=3600)

    assert await drain(pgflow_engine, SendEmail) == []  # not due yet
    [sent] = await drain(pgflow_engine, SendEmail, include_delayed=True)

    assert sent.outcome == "completed"
    assert "to=a@example.com subject='Your order' attempt=1" in capsys.readouterr().out
