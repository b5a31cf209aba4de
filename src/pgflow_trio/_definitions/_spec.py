"""Plain-data flow definitions (runtime flows, per-tenant automations), in the JSON shape the CLI also reads:

    {"slug": "...", "max_attempts"?: int, "base_delay"?: int, "timeout"?: int,
     "steps": [{"slug": "...", "deps"?: ["..."], "step_type"?: "single" | "map",
                "max_attempts"?: int, "base_delay"?: int, "timeout"?: int, "start_delay"?: int}]}

Steps are listed in definition order; a map step's single dependency, if any, is its array source.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from pgflow_trio._definitions._model import FlowDef, Options, StepDef, build_flow
from pgflow_trio._definitions._schedule import Schedule, make_schedules
from pgflow_trio._exceptions import DefinitionError
from pgflow_trio._util import read_text

_FLOW_KEYS = {"slug", "max_attempts", "base_delay", "timeout", "steps", "cron"}
_CRON_KEYS = {"schedule", "input", "name", "timezone", "catch_up"}
_STEP_KEYS = {"slug", "deps", "step_type", "max_attempts", "base_delay", "timeout", "start_delay"}


def _options(data: Mapping[str, Any], names: tuple[str, ...]) -> Options:
    return Options(**{name: data[name] for name in names if data.get(name) is not None})


def flow_from_spec(data: object, *, origin: str = "spec") -> FlowDef:
    """Validate plain data and build the FlowDef; errors give the JSON path (`$.steps[1].deps`)."""
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{origin}: $ must be an object with slug and steps, got {type(data).__name__}")
    unknown = sorted(set(data) - _FLOW_KEYS)
    if unknown:
        raise DefinitionError(f"{origin}: $ has unknown keys {unknown}; allowed: {sorted(_FLOW_KEYS)}")
    if "slug" not in data:
        raise DefinitionError(f"{origin}: $.slug is required")
    steps_data = data.get("steps")
    if not isinstance(steps_data, list):
        raise DefinitionError(f"{origin}: $.steps must be a list of step objects")
    steps: list[StepDef] = []
    for index, step in enumerate(steps_data):
        where = f"$.steps[{index}]"
        if not isinstance(step, Mapping):
            raise DefinitionError(f"{origin}: {where} must be an object")
        unknown = sorted(set(step) - _STEP_KEYS)
        if unknown:
            raise DefinitionError(f"{origin}: {where} has unknown keys {unknown}; allowed: {sorted(_STEP_KEYS)}")
        if "slug" not in step:
            raise DefinitionError(f"{origin}: {where}.slug is required")
        deps = step.get("deps", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise DefinitionError(f"{origin}: {where}.deps must be a list of step slugs")
        step_type = step.get("step_type", "single")
        if step_type not in ("single", "map"):
            raise DefinitionError(f"{origin}: {where}.step_type must be 'single' or 'map', got {step_type!r}")
        options = _options(step, ("max_attempts", "base_delay", "timeout", "start_delay"))
        steps.append(StepDef(slug=step["slug"], step_type=step_type, deps=tuple(deps), options=options))
    options = _options(data, ("max_attempts", "base_delay", "timeout"))
    flow = build_flow(data["slug"], steps, options=options, origin=origin)
    cron = _cron(data.get("cron"), origin)
    return attrs.evolve(flow, schedules=make_schedules(flow.slug, cron, origin, lambda value: value))


def _cron(raw: object, origin: str) -> list[Schedule] | None:
    if raw is None:
        return None
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for index, item in enumerate(items):
        where = f"$.cron[{index}]" if isinstance(raw, list) else "$.cron"
        if isinstance(item, str):
            out.append(Schedule(item))
            continue
        if not isinstance(item, Mapping) or "schedule" not in item:
            raise DefinitionError(f"{origin}: {where} must be a cron string or an object with a schedule")
        unknown = sorted(set(item) - _CRON_KEYS)
        if unknown:
            raise DefinitionError(f"{origin}: {where} has unknown keys {unknown}; allowed: {sorted(_CRON_KEYS)}")
        out.append(
            Schedule(
                item["schedule"],
                input=item.get("input"),
                name=item.get("name"),
                timezone=item.get("timezone", "UTC"),
                catch_up=item.get("catch_up", "skip"),
            )
        )
    return out


def load_spec_file(path: Path) -> FlowDef:
    """The FlowDef a JSON spec file describes (ConfigurationError when the file cannot be read)."""
    text = read_text(path, "spec file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"{path}: not valid JSON: {exc}") from exc
    return flow_from_spec(data, origin=str(path))


def spec_of(flow: FlowDef) -> dict[str, Any]:
    """The plain-data form of any FlowDef (the inverse of `flow_from_spec`)."""
    out: dict[str, Any] = {"slug": flow.slug, **dict(flow.options.items())}
    out["steps"] = [
        {
            "slug": s.slug,
            **({"deps": list(s.deps)} if s.deps else {}),
            **({"step_type": "map"} if s.is_map else {}),
            **dict(s.options.items()),
        }
        for s in flow.steps
    ]
    return out
