"""Checked by mypy (like flow_types.py), never imported. Every `type: ignore[code]` marks an error mypy must report."""

from __future__ import annotations

import datetime
import uuid
from typing import Any, assert_type

import attrs

from pgflow_trio import JSON, Context, Engine, FlowDef, Job, RunHandle, open_engine


@attrs.frozen
class Email:
    to: str


class Send(Job[Email, int]):
    async def perform(self, email: Email, ctx: Context) -> int:
        return len(email.to)


async def options() -> None:
    async with open_engine("postgresql://", pool_size=3, install=True, connect_timeout=2.5) as engine:
        assert_type(engine, Engine)
    async with open_engine(pool_sizee=3):  # type: ignore[call-arg]
        pass
    async with open_engine(install="yes"):  # type: ignore[arg-type]
        pass
    async with open_engine(connect_timeout="soon"):  # type: ignore[arg-type]
        pass


async def jobs(engine: Engine, flow: FlowDef) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert_type(await engine.enqueue_in(Send, Email("a"), 5), RunHandle[int])
    assert_type(await engine.enqueue_at(Send, Email("a"), later), RunHandle[int])
    assert_type(await engine.enqueue_in("send", {"to": "a"}, 5), RunHandle[JSON])
    assert_type(await engine.enqueue_at(flow, Email("a"), later), RunHandle[Any])
    await engine.enqueue_in(Send, "not an email", 5)  # type: ignore[misc]
    await engine.enqueue_at(Send, 3, later)  # type: ignore[misc]
    await engine.enqueue_in("send", object(), 5)  # type: ignore[call-overload]


async def untyped(engine: Engine) -> None:
    data = {"to": "a"}  # dict[str, str]: read-only JSON containers are accepted
    handle = await engine.start("send", data)
    assert_type(handle, RunHandle[JSON])
    assert_type(await handle.result(), JSON)
    await engine.start("send", {"when": datetime.date.today()})  # type: ignore[dict-item]
    run = await engine.get_run(handle.run_id)
    assert_type(run.input, JSON)
    assert_type(run.output, JSON)
    run.output + 1  # type: ignore[operator]


async def references(engine: Engine, run_id: uuid.UUID) -> None:
    await engine.get_flow("send")
    await engine.get_flow(Send)
    await engine.list_runs(flow=Send)
    await engine.get_flow(42)  # type: ignore[arg-type]
    await engine.list_runs(flow=3.5)  # type: ignore[arg-type]
    await engine.flow_exists(b"send")  # type: ignore[arg-type]
    await engine.delete_flow(None)  # type: ignore[arg-type]
    assert_type(engine.handle(run_id, Send), RunHandle[int])
    assert_type(engine.handle(run_id), RunHandle[JSON])
    assert_type(engine.handle(run_id, "send"), RunHandle[JSON])
    engine.handle(run_id, 7)  # type: ignore[call-overload]


async def health(engine: Engine) -> None:
    report = await engine.health_check(max_age=60, require_workers=False)
    assert_type(report.queues[0].oldest_visible_age, float | None)
    await engine.health_check(max_age="1m")  # type: ignore[arg-type]
