"""`build_flow`: the one way a `FlowDef` is made. It validates slugs, options, the step graph, the result mode and the
schedules (whose inputs are encoded as the flow's input), so every FlowDef in the process is a valid one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from pgflow_trio._definitions._model import (
    FlowDef,
    Options,
    ResultMode,
    StepDef,
    check_options,
    leaves_of,
    order_steps,
)
from pgflow_trio._definitions._schedule import Schedule, ScheduleDef, make_schedules
from pgflow_trio._definitions._slugs import slug_problem
from pgflow_trio._definitions._values import encode_input
from pgflow_trio._exceptions import DefinitionError


def build_flow(
    slug: str,
    steps: Sequence[StepDef],
    *,
    options: Options = Options(),
    origin: str,
    input_type: Any = Any,
    output_type: Any = Any,
    result_mode: ResultMode = "raw",
    schedules: str | Schedule | Sequence[Schedule] | None = None,
    is_job: bool = False,
    typed: bool = False,
    slug_label: str = "flow slug",
) -> FlowDef:
    """Validate and assemble a FlowDef (the only way one is made).

    `result_mode` says how the run's output becomes the declared output type (`leaf`: the one leaf's output,
    `record`: an attrs class with a field per leaf; `raw`: as stored). `schedules` is `cron=` as users write it (a
    cron string, a `Schedule`, or a list of named ones): validated here, their inputs checked against the flow."""
    if (problem := slug_problem(slug)) is not None:
        raise DefinitionError(f"{origin}: {slug_label} {slug!r} {problem}")
    check_options(options, f"{origin}, flow options", allow_start_delay=False)
    if not steps:
        raise DefinitionError(f"{origin}: a flow needs at least one step")
    seen: set[str] = set()
    for s in steps:
        if (problem := slug_problem(s.slug)) is not None:
            raise DefinitionError(f"{origin}: step slug {s.slug!r} {problem}")
        if s.slug in seen:
            raise DefinitionError(f"{origin}: step {s.slug!r} is defined twice; step slugs must be unique")
        seen.add(s.slug)
        check_options(s.options, f"{origin}, step {s.slug!r}", allow_start_delay=True)
        if len(set(s.deps)) != len(s.deps):
            raise DefinitionError(f"{origin}, step {s.slug!r}: a dependency is listed twice")
        if s.is_map and len(s.deps) > 1:
            raise DefinitionError(
                f"{origin}, step {s.slug!r}: a map step takes its array from at most one step, but it depends "
                f"on {', '.join(s.deps)}; combine them in a step that returns the list to map over"
            )
    ordered = order_steps(steps, origin)
    _check_result_mode(result_mode, output_type, leaves_of(ordered), typed=typed, origin=origin)
    fields: dict[str, Any] = {
        "slug": slug,
        "steps": ordered,
        "options": options,
        "input_type": input_type,
        "output_type": output_type,
        "result_mode": result_mode,
        "origin": origin,
        "is_job": is_job,
        "typed": typed,
    }
    if schedules is None:
        return FlowDef(**fields)
    return FlowDef(**fields, schedules=_schedules(FlowDef(**fields), schedules))


def _check_result_mode(mode: object, output_type: Any, leaves: tuple[str, ...], *, typed: bool, origin: str) -> None:
    """`mode` must fit the flow's shape: `leaf` needs one leaf, `record` an attrs output class with a field per
    leaf; only typed flows decode their output."""
    if mode not in ("raw", "leaf", "record"):
        raise DefinitionError(f"{origin}: result_mode must be 'raw', 'leaf' or 'record', got {mode!r}")
    if mode == "raw":
        return
    if not typed:
        raise DefinitionError(f"{origin}: result_mode {mode!r} needs a typed flow (one with an output type)")
    if mode == "leaf" and len(leaves) != 1:
        raise DefinitionError(
            f"{origin}: result_mode 'leaf' needs exactly one step nobody depends on, but there are {', '.join(leaves)}"
        )
    if mode == "record":
        fields = {f.name for f in attrs.fields(output_type)} if attrs.has(output_type) else None
        if fields != set(leaves):
            raise DefinitionError(
                f"{origin}: result_mode 'record' needs an attrs output class with one field per step nobody "
                f"depends on ({', '.join(leaves)})"
            )


def _schedules(flow: FlowDef, cron: str | Schedule | Sequence[Schedule]) -> tuple[ScheduleDef, ...]:
    """The validated schedules of `flow`, their inputs encoded as the flow's input."""
    return make_schedules(flow.slug, cron, flow.origin, lambda value: encode_input(flow, value))
