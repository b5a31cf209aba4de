"""The one immutable definition model. Typed flow classes, jobs and plain-data specs all become a `FlowDef`;
the compiler, the worker and everything after read only this model. `_build.build_flow` validates it."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import attrs

from pgflow_trio._definitions._schedule import ScheduleDef
from pgflow_trio._exceptions import DefinitionError

StepType = Literal["single", "map"]
ResultMode = Literal["raw", "leaf", "record"]

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
