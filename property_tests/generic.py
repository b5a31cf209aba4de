"""Runtime flows for worker subprocesses of the property tests: `flow_0`, `flow_1`, ... are `(FlowDef, handlers)`
built from the specs in the file named by PGFLOW_PROPERTY_SPECS. Every handler behaves as its run's plan says and
logs each execution (start and end, with its pid) as JSON lines under PGFLOW_PROPERTY_LOG."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from pgflow_trio import Context, flow_from_spec
from property_tests.model import element_output, header, single_output

_LOG = Path(os.environ.get("PGFLOW_PROPERTY_LOG", "."))


def _append(record: dict[str, Any]) -> None:
    with (_LOG / f"{os.getpid()}.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _handler(slug: str, is_map: bool) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(task_input: Any, ctx: Context) -> Any:
        behaviour = header(ctx.flow_input)["plan"].get(slug, {})
        base = {
            "execution": uuid.uuid4().hex,
            "pid": os.getpid(),
            "run": str(ctx.run_id),
            "step": slug,
            "index": ctx.task_index,
            "attempt": ctx.attempt,
        }
        _append({**base, "event": "start", "at": time.time(), "input": task_input})
        outcome = "cancelled"
        try:
            if behaviour.get("hang") == ctx.attempt:
                await trio.sleep_forever()
            if ctx.attempt <= behaviour.get("fail_until", 0):
                outcome = "failed"
                raise RuntimeError(f"planned failure on attempt {ctx.attempt}")
            await trio.sleep(0.01)
            outcome = "ok"
            if is_map:
                return element_output(slug, task_input)
            return single_output(slug, {k: v for k, v in task_input.items() if k != "run"})
        finally:
            _append({**base, "event": "end", "at": time.time(), "outcome": outcome})

    return handle


def _targets() -> dict[str, Any]:
    path = os.environ.get("PGFLOW_PROPERTY_SPECS")
    if not path:
        return {}
    targets = {}
    for index, spec in enumerate(json.loads(Path(path).read_text())):
        flow = flow_from_spec(spec)
        handlers = {s.slug: _handler(s.slug, s.is_map) for s in flow.steps}
        targets[f"flow_{index}"] = (flow, handlers)
    return targets


globals().update(_targets())
