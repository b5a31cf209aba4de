"""The one immutable definition model. Typed flow classes, jobs and plain-data specs all become a `FlowDef`;
the compiler, the worker and everything after read only this model. `build_flow` validates it."""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from pgflow_trio._exceptions import DefinitionError

if TYPE_CHECKING:
    from pgflow_trio._definitions._schedule import Schedule, ScheduleDef

StepType = Literal["single", "map"]
ResultMode = Literal["raw", "leaf", "record"]

MAX_SLUG_LENGTH = 128
_SQL_SLUG = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DSL_FORBIDDEN = re.compile(r"[/:#\-?]")
RESERVED_SLUGS = frozenset({"run"})
_MINIMUM = {"max_attempts": 1, "base_delay": 1, "timeout": 3, "start_delay": 0}


@attrs.frozen
class Options:
    """Runtime options; None means "not set" (the database default, or the flow's value for a step)."""

    max_attempts: int | None = None
    base_delay: int | None = None
    timeout: int | None = None
    start_delay: int | None = None

    def items(self) -> list[tuple[str, int]]:
        """The options that are set, in the order pgflow's compiler emits them."""
        values = [
            ("max_attempts", self.max_attempts),
            ("base_delay", self.base_delay),
            ("timeout", self.timeout),
            ("start_delay", self.start_delay),
        ]
        return [(name, value) for name, value in values if value is not None]


class ParamKind(enum.Enum):
    """Where a handler parameter's value comes from."""

    FLOW_INPUT = "flow_input"  # the run's input
    DEPENDENCY = "dependency"  # a dependency's output (a list of outputs for a map dependency)
    ELEMENT = "element"  # one element of a map step's array
    CONTEXT = "context"  # the task Context


@attrs.frozen
class HandlerParam:
    """One parameter of a typed handler and where its value comes from."""

    name: str
    kind: ParamKind
    annotation: Any = None
    source: str | None = None  # the dependency's slug for DEPENDENCY (and ELEMENT of a dependent map)


@attrs.frozen
class StepDef:
    """One step. `output_type` is the handler's return type (for a map step: of one element's handler)."""

    slug: str
    step_type: StepType = "single"
    deps: tuple[str, ...] = ()
    options: Options = Options()
    handler: Callable[..., Awaitable[Any]] | None = None
    params: tuple[HandlerParam, ...] = ()
    output_type: Any = Any

    @property
    def is_map(self) -> bool:
        return self.step_type == "map"

    @property
    def dependent_type(self) -> Any:
        """What dependents receive: the output, or the list of outputs of a map step."""
        return list[self.output_type] if self.is_map else self.output_type  # type: ignore[name-defined]


@attrs.frozen
class FlowDef:
    """A validated flow definition: slug, options and steps in an order where dependencies come first."""

    slug: str
    steps: tuple[StepDef, ...]
    options: Options = Options()
    input_type: Any = Any
    output_type: Any = Any
    result_mode: ResultMode = "raw"
    origin: str = ""
    is_job: bool = False
    typed: bool = False
    schedules: tuple[ScheduleDef, ...] = ()

    def step(self, slug: str) -> StepDef:
        for candidate in self.steps:
            if candidate.slug == slug:
                return candidate
        raise KeyError(slug)

    @property
    def leaves(self) -> tuple[str, ...]:
        """Steps no other step depends on: their outputs make up the run's output."""
        return leaves_of(self.steps)


def leaves_of(steps: Sequence[StepDef]) -> tuple[str, ...]:
    """The slugs of the steps no other step depends on, in the order given."""
    used = {dep for s in steps for dep in s.deps}
    return tuple(s.slug for s in steps if s.slug not in used)


def slug_problem(slug: object) -> str | None:
    """Why `slug` is not valid for both pgflow's DSL and its SQL (`pgflow.is_valid_slug`), or None."""
    if not isinstance(slug, str):
        return f"must be a string, got {type(slug).__name__}"
    if not slug:
        return "must not be empty"
    if len(slug) > MAX_SLUG_LENGTH:
        return f"is {len(slug)} characters long; the limit is {MAX_SLUG_LENGTH}"
    if slug[0].isdigit():
        return "must not start with a digit"
    if slug.startswith("_"):
        return "must not start with an underscore"
    if any(ch.isspace() for ch in slug):
        return "must not contain whitespace"
    if _DSL_FORBIDDEN.search(slug):
        return "must not contain / : # - or ?"
    if not _SQL_SLUG.match(slug):
        return "may contain only ASCII letters, digits and underscores"
    if slug in RESERVED_SLUGS:
        return f"is reserved ({', '.join(sorted(RESERVED_SLUGS))}); choose another name"
    return None


def check_options(options: Options, where: str, *, allow_start_delay: bool) -> None:
    for name, value in attrs.asdict(options).items():
        if value is None:
            continue
        if name == "start_delay" and not allow_start_delay:
            raise DefinitionError(f"{where}: start_delay is a step option; set it on a step, not on the flow")
        if isinstance(value, bool) or not isinstance(value, int):
            raise DefinitionError(f"{where}: {name} must be an integer number of seconds/attempts, got {value!r}")
        if value < _MINIMUM[name]:
            raise DefinitionError(f"{where}: {name} must be >= {_MINIMUM[name]}, got {value}")


def order_steps(steps: Sequence[StepDef], origin: str) -> tuple[StepDef, ...]:
    """Steps ordered so dependencies come first, keeping definition order otherwise; cycles are errors."""
    by_slug = {s.slug: s for s in steps}
    for s in steps:
        for dep in s.deps:
            if dep not in by_slug:
                known = ", ".join(sorted(by_slug)) or "none"
                raise DefinitionError(
                    f"{origin}: step {s.slug!r} depends on unknown step {dep!r} (steps: {known}); "
                    "fix the name or add that step"
                )
            if dep == s.slug:
                raise DefinitionError(f"{origin}: step {s.slug!r} depends on itself; remove that dependency")
    placed: list[StepDef] = []
    done: set[str] = set()
    remaining = list(steps)
    while remaining:
        ready = next((s for s in remaining if all(d in done for d in s.deps)), None)
        if ready is None:
            cycle = _find_cycle({s.slug: s.deps for s in remaining})
            raise DefinitionError(
                f"{origin}: dependency cycle {' -> '.join(cycle)}; a flow must be acyclic: remove one of these "
                "dependencies"
            )
        placed.append(ready)
        done.add(ready.slug)
        remaining.remove(ready)
    return tuple(placed)


def _find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str]:
    path: list[str] = []
    visiting: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*path[path.index(node) :], node]
        visiting.add(node)
        path.append(node)
        for nxt in graph.get(node, ()):
            if nxt in graph and (found := visit(nxt)) is not None:
                return found
        path.pop()
        visiting.discard(node)
        return None

    for start in graph:
        found = visit(start)
        if found:
            return found
    return list(graph)


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
    from pgflow_trio._definitions._schedule import make_schedules  # both import this module
    from pgflow_trio._definitions._values import encode_input

    return make_schedules(flow.slug, cron, flow.origin, lambda value: encode_input(flow, value))
