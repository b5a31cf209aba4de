"""Plain-data flow definitions (runtime flows, per-tenant automations), in the JSON shape the CLI also reads:

    {"slug": "...", "max_attempts"?: int, "base_delay"?: int, "timeout"?: int,
     "steps": [{"slug": "...", "deps"?: ["..."], "step_type"?: "single" | "map",
                "max_attempts"?: int, "base_delay"?: int, "timeout"?: int, "start_delay"?: int}],
     "cron"?: "expression" | {"schedule", "input"?, "name"?, "timezone"?, "catch_up"?} | [...]}

Steps are listed in definition order; a map step's single dependency, if any, is its array source. The shape is
the attrs classes `FlowSpec`, `StepSpec` and `CronSpec`, structured by a cattrs converter of their own that refuses
unknown keys and values of the wrong JSON kind, reporting each with its path (`$.steps[1].deps`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn
from cattrs.v import format_exception

from pgflow_trio._definitions._build import build_flow
from pgflow_trio._definitions._model import FlowDef, Options, StepDef, StepType
from pgflow_trio._definitions._schedule import Schedule
from pgflow_trio._exceptions import DefinitionError
from pgflow_trio._util import read_text


@attrs.frozen
class CronSpec:
    """A schedule in a spec: `{"schedule", "input"?, "name"?, "timezone"?, "catch_up"?}`."""

    schedule: str
    input: Any = None
    name: str | None = None
    timezone: str = "UTC"
    catch_up: str = "skip"


CronItem: TypeAlias = str | CronSpec
CronField: TypeAlias = str | CronSpec | list[str | CronSpec] | None


@attrs.frozen
class StepSpec:
    """A step in a spec."""

    slug: str
    deps: list[str] = attrs.Factory(list)
    step_type: StepType = "single"
    max_attempts: int | None = None
    base_delay: int | None = None
    timeout: int | None = None
    start_delay: int | None = None


@attrs.frozen
class FlowSpec:
    """A flow in plain data: what `flow_from_spec` reads and `spec_of` writes."""

    slug: str
    max_attempts: int | None = None
    base_delay: int | None = None
    timeout: int | None = None
    steps: list[StepSpec] = attrs.field(kw_only=True)
    cron: str | CronSpec | list[str | CronSpec] | None = None


Hook: TypeAlias = Callable[[Any, Any], Any]


class _WrongKind(TypeError):
    """A JSON value of the wrong kind; the message says what was expected and what came."""

    def __init__(self, expected: str, value: object) -> None:
        super().__init__(f"expected {expected}, got {_describe(value)}")


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__qualname__}"


def _structure_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        raise _WrongKind("a string", value)
    return value


def _structure_int(value: object, _: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _WrongKind("an integer", value)
    return value


def _structure_step_type(value: object, _: object) -> StepType:
    if value == "single" or value == "map":
        return value
    raise ValueError(f"must be 'single' or 'map', got {value!r}")


def _structure_cron(value: object, _: object) -> CronField:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        items: list[str | CronSpec] = _converter.structure(value, list[CronItem])
        return items
    return _converter.structure(value, CronSpec)


def _structure_cron_item(value: object, _: object) -> str | CronSpec:
    if isinstance(value, str):
        return value
    return _converter.structure(value, CronSpec)


def _is_list(cls: Any) -> bool:
    return get_origin(cls) is list


def _object_hook(cls: Any) -> Hook:
    inner = make_dict_structure_fn(cls, _converter)

    def structure(value: object, _: object) -> Any:
        if not isinstance(value, dict):
            raise _WrongKind("an object", value)
        return inner(value, cls)

    return structure


def _list_hook(cls: Any) -> Hook:
    inner = list_structure_factory(cls, _converter)

    def structure(value: object, _: object) -> Any:
        if not isinstance(value, list):
            raise _WrongKind("an array", value)
        return inner(value, cls)

    return structure


_converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
_converter.register_structure_hook(str, _structure_str)
_converter.register_structure_hook(int, _structure_int)
_converter.register_structure_hook_func(lambda t: t == StepType, _structure_step_type)
_converter.register_structure_hook_func(lambda t: t == CronItem, _structure_cron_item)
_converter.register_structure_hook_func(lambda t: t == CronField, _structure_cron)
_converter.register_structure_hook_factory(_is_list, _list_hook)
_converter.register_structure_hook_factory(attrs.has, _object_hook)


def _format_error(exc: BaseException, expected: type | None) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        allowed = sorted(a.name for a in attrs.fields(exc.cl)) if exc.cl is not None else []
        return f"unknown keys {sorted(exc.extra_fields)}; allowed: {allowed}"
    if isinstance(exc, (_WrongKind, ValueError)):
        return str(exc)
    return format_exception(exc, expected)


def parse_spec(data: object, *, origin: str = "spec") -> FlowSpec:
    """`data` as a FlowSpec; DefinitionError naming `origin` and every problem with its path."""
    try:
        return _converter.structure(data, FlowSpec)
    except Exception as exc:
        problems = cattrs.transform_error(exc, format_exception=_format_error)
        raise DefinitionError(f"{origin}: " + "; ".join(problems)) from None


def _options(spec: StepSpec | FlowSpec) -> Options:
    return Options(
        max_attempts=spec.max_attempts,
        base_delay=spec.base_delay,
        timeout=spec.timeout,
        start_delay=spec.start_delay if isinstance(spec, StepSpec) else None,
    )


def _schedule(item: str | CronSpec) -> Schedule:
    if isinstance(item, str):
        return Schedule(item)
    return Schedule(item.schedule, item.input, item.name, item.timezone, item.catch_up)  # type: ignore[arg-type]


def flow_from_spec(data: object, *, origin: str = "spec") -> FlowDef:
    """Validate plain data and build the FlowDef; errors give the JSON path (`$.steps[1].deps`)."""
    spec = parse_spec(data, origin=origin)
    steps = [StepDef(slug=s.slug, step_type=s.step_type, deps=tuple(s.deps), options=_options(s)) for s in spec.steps]
    cron = spec.cron
    schedules: Schedule | list[Schedule] | None = None
    if isinstance(cron, list):
        schedules = [_schedule(item) for item in cron]
    elif cron is not None:
        schedules = _schedule(cron)
    return build_flow(spec.slug, steps, options=_options(spec), origin=origin, schedules=schedules)


def load_spec_file(path: Path) -> FlowDef:
    """The FlowDef a JSON spec file describes (ConfigurationError when the file cannot be read)."""
    text = read_text(path, "spec file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"{path}: not valid JSON: {exc}") from exc
    return flow_from_spec(data, origin=str(path))


def spec_of(flow: FlowDef) -> dict[str, Any]:
    """The plain-data form of any FlowDef (the inverse of `flow_from_spec`; schedules are not included)."""
    spec = FlowSpec(
        slug=flow.slug,
        max_attempts=flow.options.max_attempts,
        base_delay=flow.options.base_delay,
        timeout=flow.options.timeout,
        steps=[
            StepSpec(
                slug=s.slug,
                deps=list(s.deps),
                step_type=s.step_type,
                max_attempts=s.options.max_attempts,
                base_delay=s.options.base_delay,
                timeout=s.options.timeout,
                start_delay=s.options.start_delay,
            )
            for s in flow.steps
        ],
    )
    data: dict[str, Any] = _unstructurer.unstructure(spec)
    return data


_unstructurer = cattrs.Converter(omit_if_default=True)
