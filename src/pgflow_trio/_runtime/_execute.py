"""Calling a typed handler with pgflow's task input (structured once into the annotated types) and turning its output
into the JSON text for complete_task (in one pass).

Task input as pgflow core 0.8.1 builds it: a root step gets `{"run": <flow input>}`, a dependent step
`{"run": ..., "<dep>": <output>, ...}`, a map step the one element it handles.
"""

from __future__ import annotations

from typing import Any

import attrs

from pgflow_trio._codec import structure
from pgflow_trio._definitions._context import Context
from pgflow_trio._definitions._model import FlowDef, ParamKind, StepDef
from pgflow_trio._definitions._values import encode_output, field_of
from pgflow_trio._exceptions import DefinitionError, SerializationError, TaskInputError


def instantiate(flow: FlowDef, target: object) -> object:
    """The object whose methods are the handlers: `target` itself, or a new instance of a flow/job class."""
    if not isinstance(target, type):
        return target
    try:
        return target()
    except TypeError as exc:
        raise DefinitionError(
            f"{flow.origin}: cannot create an instance without arguments ({exc}); pass an instance instead"
        ) from exc


def build_arguments(flow: FlowDef, step: StepDef, task_input: Any, ctx: Context) -> dict[str, Any]:
    """Keyword arguments for `step.handler`, structured into the annotated types.

    `ctx` carries the raw JSON flow input; a typed handler's Context gets it structured into the flow's input type.
    """
    kwargs: dict[str, Any] = {}
    where = f"{flow.slug}.{step.slug}"
    typed_ctx: Context | None = None
    for param in step.params:
        if param.kind is ParamKind.CONTEXT:
            if typed_ctx is None:
                typed_ctx = _typed_context(flow, ctx, where)
            kwargs[param.name] = typed_ctx
        elif param.kind is ParamKind.ELEMENT:
            kwargs[param.name] = structure(task_input, param.annotation, what=f"{where}: element {ctx.task_index}")
        elif param.kind is ParamKind.FLOW_INPUT:
            kwargs[param.name] = structure(field_of(task_input, "run", where), param.annotation, what=f"{where}: input")
            if typed_ctx is None and flow.typed and param.annotation == flow.input_type:
                typed_ctx = attrs.evolve(ctx, flow_input=kwargs[param.name])  # the flow input, structured once
        else:
            assert param.source is not None
            value = field_of(task_input, param.source, where)
            kwargs[param.name] = structure(value, param.annotation, what=f"{where}: output of {param.source!r}")
    return kwargs


def _typed_context(flow: FlowDef, ctx: Context, where: str) -> Context:
    if not flow.typed:
        return ctx
    flow_input = structure(ctx.flow_input, flow.input_type, what=f"{where}: flow input (ctx.flow_input)")
    return attrs.evolve(ctx, flow_input=flow_input)


async def call_handler(flow: FlowDef, step: StepDef, instance: object, task_input: Any, ctx: Context) -> str:
    """Run one task of a typed step and return its output as the JSON text for complete_task.

    Raises TaskInputError when the task input does not fit the handler's parameters (before calling it), and
    SerializationError when the output does not fit its declared type or cannot be JSON."""
    assert step.handler is not None
    try:
        kwargs = build_arguments(flow, step, task_input, ctx)
    except SerializationError as exc:
        raise TaskInputError(str(exc)) from exc
    result = await step.handler(instance, **kwargs)
    return encode_output(flow, step, result)
