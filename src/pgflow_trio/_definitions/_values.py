"""A flow's values as JSON: its input on the way in, each step's output on the way out (both as the JSON text that goes
to the database unchanged), and the run's output back into the flow's declared output type. Used by the client, the
runtime and schedules alike."""

from __future__ import annotations

from typing import Any, get_origin

from pgflow_trio._codec import encode, from_json, structure, to_json, unstructure
from pgflow_trio._definitions._model import FlowDef, StepDef
from pgflow_trio._exceptions import SerializationError


def field_of(task_input: Any, key: str, where: str) -> Any:
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


def encode_output(flow: FlowDef, step: StepDef, value: Any) -> str:
    """A handler's return value as the JSON text for complete_task, checked against the declared return type."""
    where = f"output of step {flow.slug}.{step.slug}"
    if flow.typed and not _matches(value, step.output_type):
        raise SerializationError(
            f"{where}: declared {getattr(step.output_type, '__qualname__', step.output_type)}, "
            f"got {type(value).__qualname__}"
        )
    return encode(value, what=where)


def decode_run_output(flow: FlowDef, output: Any) -> Any:
    """The run's output (`{leaf: output}`) in the flow's declared output type."""
    if flow.result_mode == "raw" or not flow.typed:
        return output
    what = f"output of run of {flow.slug}"
    if flow.result_mode == "leaf":
        (leaf,) = flow.leaves
        return structure(field_of(output, leaf, flow.slug), flow.output_type, what=what, path=f"$.{leaf}")
    return structure(output, flow.output_type, what=what)


def encode_input_json(flow: FlowDef, value: Any) -> str:
    """A flow input as the JSON text for start_flow (checked against the flow's input type when it is typed)."""
    what = f"input of {flow.slug}"
    if flow.typed and not _matches(value, flow.input_type):
        expected = getattr(flow.input_type, "__qualname__", repr(flow.input_type))
        raise SerializationError(f"{what}: expected {expected}, got {type(value).__qualname__}")
    data = unstructure(value, what=what)
    root_map = any(s.is_map and not s.deps for s in flow.steps)
    if root_map and not isinstance(data, list):
        raise SerializationError(f"{what}: this flow maps over its input, which must be a list")
    return to_json(data, what=what)


def encode_input(flow: FlowDef, value: Any) -> Any:
    """A flow input as the JSON data the database will hold (tuples as arrays, object keys as strings): what a
    schedule keeps, so it compares equal to the input read back from its table."""
    return from_json(encode_input_json(flow, value))
