"""Run a typed flow or job in-process, without a database: for unit tests of handlers and for trying things out.

Each task gets exactly the input pgflow core would build (every value encoded once, as for the database, and decoded
once), map steps fan out and fan in the same way, and the result is structured into the declared output type. There
are no retries: the first exception a handler raises propagates.
"""

from __future__ import annotations

import uuid
from typing import Any, ParamSpec, TypeVar

from pgflow_trio._codec import from_json
from pgflow_trio._definitions._context import Context
from pgflow_trio._definitions._flow import RunSignature, definition_of
from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._definitions._values import decode_run_output, encode_input_json
from pgflow_trio._runtime._execute import call_handler, instantiate

P = ParamSpec("P")
Out = TypeVar("Out")


async def run_inline(flow: RunSignature[P, Out], /, *args: P.args, **kwargs: P.kwargs) -> Out:
    """`run_inline(Flow, input)`: execute every step of the flow (a class or an instance) for `input` in dependency
    order and return the typed result. mypy checks `input` against the flow's input type."""
    input = _the_input(args, kwargs)
    definition = definition_of(flow)
    instance = instantiate(definition, flow)
    flow_input = from_json(encode_input_json(definition, input))
    outputs = await _run_steps(definition, instance, flow_input)
    result: Out = decode_run_output(definition, {leaf: outputs[leaf] for leaf in definition.leaves})
    return result


def _the_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) + len(kwargs) != 1 or (kwargs and "input" not in kwargs):
        raise TypeError("run_inline takes a flow and its input: run_inline(Flow, input)")
    return args[0] if args else kwargs["input"]


async def _run_steps(flow: FlowDef, instance: object, flow_input: Any) -> dict[str, Any]:
    run_id = uuid.uuid4()
    worker_id = uuid.uuid4()
    outputs: dict[str, Any] = {}
    for step in flow.steps:

        def ctx(index: int, step_slug: str = step.slug) -> Context:
            return Context(run_id, flow.slug, step_slug, index, 1, flow_input, worker_id)

        if step.is_map:
            array = outputs[step.deps[0]] if step.deps else flow_input
            results = []
            for index, element in enumerate(array):
                results.append(from_json(await call_handler(flow, step, instance, element, ctx(index))))
            outputs[step.slug] = results
        else:
            task_input = {"run": flow_input, **{dep: outputs[dep] for dep in step.deps}}
            outputs[step.slug] = from_json(await call_handler(flow, step, instance, task_input, ctx(0)))
    return outputs
