"""Calling a typed handler with pgflow's task input, and turning outputs into JSON and run outputs back into types.

Task input as pgflow core 0.8.1 builds it: a root step gets `{"run": <flow input>}`, a dependent step
`{"run": ..., "<dep>": <output>, ...}`, a map step the one element it handles.
"""

from __future__ import annotations

from typing import Any, get_origin

import attrs

from ._context import Context
from ._definition import DefinitionError, FlowDef, ParamKind, StepDef
from ._serde import SerializationError, structure, unstructure


class TaskInputError(SerializationError):
    """A task input cannot be structured into the handler's parameters. No retry can change the input, so a worker
    fails such a task at once."""


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
            kwargs[param.name] = structure(_field(task_input, "run", where), param.annotation, what=f"{where}: input")
        else:
            assert param.source is not None
            value = _field(task_input, param.source, where)
            kwargs[param.name] = structure(value, param.annotation, what=f"{where}: output of {param.source!r}")
    return kwargs


def _typed_context(flow: FlowDef, ctx: Context, where: str) -> Context:
    if not flow.typed:
        return ctx
    flow_input = structure(ctx.flow_input, flow.input_type, what=f"{where}: flow input (ctx.flow_input)")
    return attrs.evolve(ctx, flow_input=flow_input)


def _field(task_input: Any, key: str, where: str) -> Any:
    if not isinstance(task_input, dict) or key not in task_input:
        raise SerializationError(f"{where}: task input has no {key!r} (got {type(task_input).__name__})")
    return task_input[key]


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is object or get_origin(annotation) is not None:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def encode_output(flow: FlowDef, step: StepDef, value: Any) -> Any:
    """A handler's return value as JSON data, checked against the declared return type."""
    where = f"output of step {flow.slug}.{step.slug}"
    if flow.typed and not _matches(value, step.output_type):
        raise SerializationError(
            f"{where}: declared {getattr(step.output_type, '__qualname__', step.output_type)}, "
            f"got {type(value).__qualname__}"
        )
    return unstructure(value, what=where)


async def call_handler(flow: FlowDef, step: StepDef, instance: object, task_input: Any, ctx: Context) -> Any:
    """Run one task of a typed step and return its output as JSON data.

    Raises TaskInputError when the task input does not fit the handler's parameters (before calling it), and
    SerializationError when the output does not fit its declared type."""
    assert step.handler is not None
    try:
        kwargs = build_arguments(flow, step, task_input, ctx)
    except SerializationError as exc:
        raise TaskInputError(str(exc)) from exc
    result = await step.handler(instance, **kwargs)
    return encode_output(flow, step, result)


def decode_run_output(flow: FlowDef, output: Any) -> Any:
    """The run's output (`{leaf: output}`) in the flow's declared output type."""
    if flow.result_mode == "raw" or not flow.typed:
        return output
    what = f"output of run of {flow.slug}"
    if flow.result_mode == "leaf":
        (leaf,) = flow.leaves
        return structure(_field(output, leaf, flow.slug), flow.output_type, what=what, path=f"$.{leaf}")
    return structure(output, flow.output_type, what=what)


def encode_input(flow: FlowDef, value: Any) -> Any:
    """A flow input as JSON data (checked against the flow's input type when it is typed)."""
    what = f"input of {flow.slug}"
    if flow.typed and not _matches(value, flow.input_type):
        expected = getattr(flow.input_type, "__qualname__", repr(flow.input_type))
        raise SerializationError(f"{what}: expected {expected}, got {type(value).__qualname__}")
    data = unstructure(value, what=what)
    root_map = any(s.is_map and not s.deps for s in flow.steps)
    if root_map and not isinstance(data, list):
        raise SerializationError(f"{what}: this flow maps over its input, which must be a list")
    return data
