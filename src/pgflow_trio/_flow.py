"""Typed flows and jobs. A flow is a class deriving from `Flow[In, Out]`; its `@step` / `@map_step` async methods
declare their dependencies through their parameters, resolved from type hints when the class is defined:

- a parameter annotated with the flow's input type receives the run's input;
- a parameter annotated `Context` receives the task context;
- any other parameter depends on the step whose output has its type (a map step's output is the list of its
  results); when several steps produce that type, name the parameter after the step. A parameter named after a step
  must have that step's output type. `needs(step)` as a default pins the producer explicitly (mypy checks it).
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin, overload

import attrs

from ._context import Context
from ._definition import (
    DefinitionError,
    FlowDef,
    HandlerParam,
    Options,
    ParamKind,
    ResultMode,
    StepDef,
    StepType,
    build_flow,
)
from ._execute import encode_input
from ._schedule import Schedule, make_schedules

In = TypeVar("In")
Out = TypeVar("Out")
R = TypeVar("R")
Handler = TypeVar("Handler", bound=Callable[..., Coroutine[Any, Any, Any]])

JOB_STEP = "perform"
_MARK = "__pgflow_step__"


@attrs.frozen
class _StepMark:
    step_type: StepType
    options: Options


@attrs.frozen
class _Needs:
    fn: Callable[..., Any]
    mapped: bool


def _mark(fn: Handler, step_type: StepType, options: Options) -> Handler:
    setattr(fn, _MARK, _StepMark(step_type, options))
    return fn


@overload
def step(fn: Handler, /) -> Handler: ...
@overload
def step(
    *,
    max_attempts: int | None = None,
    base_delay: int | None = None,
    timeout: int | None = None,
    start_delay: int | None = None,
) -> Callable[[Handler], Handler]: ...
def step(
    fn: Handler | None = None,
    /,
    *,
    max_attempts: int | None = None,
    base_delay: int | None = None,
    timeout: int | None = None,
    start_delay: int | None = None,
) -> Handler | Callable[[Handler], Handler]:
    """Mark an `async def` method as a step; options override the flow's for this step."""
    options = Options(max_attempts, base_delay, timeout, start_delay)
    if fn is not None:
        return _mark(fn, "single", options)
    return lambda f: _mark(f, "single", options)


@overload
def map_step(fn: Handler, /) -> Handler: ...
@overload
def map_step(
    *,
    max_attempts: int | None = None,
    base_delay: int | None = None,
    timeout: int | None = None,
    start_delay: int | None = None,
) -> Callable[[Handler], Handler]: ...
def map_step(
    fn: Handler | None = None,
    /,
    *,
    max_attempts: int | None = None,
    base_delay: int | None = None,
    timeout: int | None = None,
    start_delay: int | None = None,
) -> Handler | Callable[[Handler], Handler]:
    """Mark an `async def` method as a map step: it runs once per element of a list (the flow input, or the output
    of the one step its parameter names) and its dependents receive the list of its results, in order."""
    options = Options(max_attempts, base_delay, timeout, start_delay)
    if fn is not None:
        return _mark(fn, "map", options)
    return lambda f: _mark(f, "map", options)


def needs(producer: Callable[..., Coroutine[Any, Any, R]]) -> R:
    """Default value pinning a parameter to a single step: `charge: Charge = needs(charge_card)`."""
    return cast(R, _Needs(producer, mapped=False))


def needs_all(producer: Callable[..., Coroutine[Any, Any, R]]) -> list[R]:
    """Default value pinning a parameter to a map step, whose results arrive as a list."""
    return cast(list[R], _Needs(producer, mapped=True))


def _norm(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is list:
        return list[tuple(_norm(a) for a in get_args(tp))]  # type: ignore[misc]
    if origin is dict:
        return dict[tuple(_norm(a) for a in get_args(tp))]  # type: ignore[misc]
    return tp


def _name(tp: Any) -> str:
    if isinstance(tp, type) and not get_args(tp):
        return tp.__qualname__
    return re.sub(r"\b(?:[a-zA-Z_][\w]*\.)+", "", repr(tp))


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z])(?=[a-z])", r"_\1\2", name).lower()


def _generic_args(cls: type, base: type) -> tuple[Any, Any] | None:
    for klass in cls.__mro__:
        for orig in klass.__dict__.get("__orig_bases__", ()):
            if get_origin(orig) is base:
                args = get_args(orig)
                if len(args) == 2 and not any(isinstance(a, TypeVar) for a in args):
                    return args[0], args[1]
    return None


def _hints(fn: Callable[..., Any], cls: type, localns: dict[str, Any], origin: str) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    globalns = dict(vars(module)) if module is not None else {}
    try:
        return typing.get_type_hints(fn, globalns=globalns, localns={**localns, cls.__name__: cls})
    except NameError as exc:
        raise DefinitionError(
            f"{origin}.{fn.__name__}: cannot resolve an annotation ({exc}); define that type at module level "
            "before the flow class"
        ) from exc


@attrs.frozen
class _Raw:
    """A step method before its parameters are resolved."""

    slug: str
    fn: Callable[..., Any]
    mark: _StepMark
    hints: dict[str, Any]
    output: Any


def _collect(cls: type, origin: str, localns: dict[str, Any]) -> list[_Raw]:
    found: dict[str, _Raw] = {}
    for klass in reversed(cls.__mro__):
        for name, value in klass.__dict__.items():
            mark = getattr(value, _MARK, None)
            if not isinstance(mark, _StepMark):
                continue
            where = f"{origin}.{name}"
            if not inspect.iscoroutinefunction(value):
                raise DefinitionError(f"{where} is not async: define steps with `async def`")
            hints = _hints(value, cls, localns, origin)
            if "return" not in hints:
                raise DefinitionError(f"{where} has no return annotation: annotate what the step returns")
            found.pop(name, None)
            found[name] = _Raw(name, value, mark, hints, _norm(hints["return"]))
    return list(found.values())


def _resolve_params(raw: _Raw, steps: dict[str, _Raw], input_type: Any, origin: str) -> list[HandlerParam]:
    where = f"{origin}.{raw.slug}"
    signature = inspect.signature(raw.fn)
    params = list(signature.parameters.values())[1:]  # skip self
    by_fn = {id(s.fn): s for s in steps.values()}

    def dependent_type(s: _Raw) -> Any:
        return list[s.output] if s.mark.step_type == "map" else s.output  # type: ignore[name-defined]

    resolved: list[HandlerParam] = []
    is_map = raw.mark.step_type == "map"
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise DefinitionError(f"{where}: *{p.name} is not supported; declare each dependency as a parameter")
        if p.name not in raw.hints:
            raise DefinitionError(
                f"{where}: parameter {p.name!r} has no annotation; annotate it with the type it needs"
            )
        hint = _norm(raw.hints[p.name])
        if hint is Context:
            resolved.append(HandlerParam(p.name, ParamKind.CONTEXT, hint))
            continue
        wanted = list[hint] if is_map else hint  # type: ignore[valid-type]
        if isinstance(p.default, _Needs):
            producer = by_fn.get(id(p.default.fn))
            if producer is None:
                raise DefinitionError(f"{where}: parameter {p.name!r} needs a function that is not a step of {origin}")
            if p.default.mapped != (producer.mark.step_type == "map"):
                fix = "needs_all" if producer.mark.step_type == "map" else "needs"
                raise DefinitionError(f"{where}: parameter {p.name!r} refers to step {producer.slug!r}: use {fix}()")
            candidates = [producer]
        elif p.name in steps and p.name != raw.slug:
            candidates = [steps[p.name]]
        else:
            candidates = []
        if candidates:
            producer = candidates[0]
            if dependent_type(producer) != wanted:
                expected = _name(dependent_type(producer))
                if is_map:
                    expected = f"the element type of {expected}"
                raise DefinitionError(
                    f"{where}: parameter {p.name!r} is annotated {_name(hint)} but step {producer.slug!r} produces "
                    f"{expected}; annotate it accordingly"
                )
            kind = ParamKind.ELEMENT if is_map else ParamKind.DEPENDENCY
            resolved.append(HandlerParam(p.name, kind, hint, producer.slug))
            continue
        if not is_map and hint == input_type:
            resolved.append(HandlerParam(p.name, ParamKind.FLOW_INPUT, hint))
            continue
        if is_map and _norm(input_type) == wanted:
            resolved.append(HandlerParam(p.name, ParamKind.ELEMENT, hint))
            continue
        producers = [s for s in steps.values() if s.slug != raw.slug and dependent_type(s) == wanted]
        if len(producers) > 1:
            names = ", ".join(repr(s.slug) for s in producers)
            raise DefinitionError(
                f"{where}: parameter {p.name!r} ({_name(hint)}) is ambiguous: steps {names} all produce "
                f"{_name(wanted)}; name the parameter after the step it needs"
            )
        if not producers:
            if (
                is_map
                and get_origin(_norm(input_type)) is not list
                and not any(get_origin(dependent_type(s)) is list for s in steps.values() if s.slug != raw.slug)
            ):
                raise DefinitionError(
                    f"{where}: a map step runs over a list, but the flow input {_name(input_type)} is not a list "
                    f"and no step returns one; declare the flow input as list[{_name(hint)}] or map over a step "
                    "that returns a list"
                )
            what = f"list[{_name(hint)}]" if is_map else _name(hint)
            raise DefinitionError(
                f"{where}: parameter {p.name!r} needs {what}, but neither the flow input ({_name(input_type)}) nor "
                f"any step provides it; annotate it with the flow input type, a step's return type, or Context"
            )
        kind = ParamKind.ELEMENT if is_map else ParamKind.DEPENDENCY
        resolved.append(HandlerParam(p.name, kind, hint, producers[0].slug))
    if is_map and sum(1 for r in resolved if r.kind is ParamKind.ELEMENT) != 1:
        raise DefinitionError(
            f"{where}: a map step takes exactly one element parameter (plus an optional Context); it has "
            f"{', '.join(p.name for p in params) or 'none'}"
        )
    return resolved


def _result_mode(output_type: Any, steps: tuple[StepDef, ...], leaves: tuple[str, ...], origin: str) -> ResultMode:
    if output_type is Any or output_type is dict or _norm(output_type) == dict[str, Any]:
        return "raw"
    by_slug = {s.slug: s for s in steps}
    if len(leaves) == 1 and _norm(output_type) == _norm(by_slug[leaves[0]].dependent_type):
        return "leaf"
    if attrs.has(output_type):
        try:
            field_types = typing.get_type_hints(output_type)
        except NameError:
            field_types = {}
        fields = {f.name: _norm(field_types.get(f.name, f.type)) for f in attrs.fields(output_type)}
        if fields == {leaf: _norm(by_slug[leaf].dependent_type) for leaf in leaves}:
            return "record"
    shape = ", ".join(f"{leaf}: {_name(by_slug[leaf].dependent_type)}" for leaf in leaves)
    hint = _name(by_slug[leaves[0]].dependent_type) if len(leaves) == 1 else "an attrs class with those fields"
    raise DefinitionError(
        f"{origin}: declared output {_name(output_type)} does not match the run's output {{{shape}}} (the steps no "
        f"other step depends on); declare the output as {hint}, or as dict[str, Any]"
    )


def _origin(cls: type) -> str:
    return cls.__qualname__.rpartition("<locals>.")[2]


def _with_schedules(flow: FlowDef, cron: object) -> FlowDef:
    schedules = make_schedules(flow.slug, cron, flow.origin, lambda value: encode_input(flow, value))
    return attrs.evolve(flow, schedules=schedules)


def _define_flow(cls: type, slug: str | None, options: Options, localns: dict[str, Any]) -> FlowDef:
    origin = _origin(cls)
    args = _generic_args(cls, Flow)
    if args is None:
        raise DefinitionError(f"{origin}: declare its input and output types: class {origin}(Flow[In, Out])")
    input_type, output_type = (_norm(a) for a in args)
    raws = _collect(cls, origin, localns)
    if not raws:
        raise DefinitionError(f"{origin}: a flow needs at least one step: decorate async methods with @step")
    by_slug = {r.slug: r for r in raws}
    steps = []
    for raw in raws:
        params = _resolve_params(raw, by_slug, input_type, origin)
        deps = tuple(dict.fromkeys(p.source for p in params if p.source is not None))
        steps.append(StepDef(raw.slug, raw.mark.step_type, deps, raw.mark.options, raw.fn, tuple(params), raw.output))
    flow = build_flow(
        slug if slug is not None else _snake(cls.__name__),
        steps,
        options=options,
        origin=origin,
        input_type=input_type,
        output_type=output_type,
        typed=True,
    )
    mode = _result_mode(output_type, flow.steps, flow.leaves, origin)
    return attrs.evolve(flow, result_mode=mode)


class Definition(Generic[In, Out]):
    """What flows and jobs have in common for typing: they take `In` and produce `Out`."""

    __pgflow__: ClassVar[FlowDef]


class Flow(Definition[In, Out]):
    """Base class of typed flows: `class ProcessOrder(Flow[OrderInput, Receipt], max_attempts=3): ...`.

    Class keywords: `slug` (default: the class name in snake_case), `max_attempts`, `base_delay`, `timeout`,
    `cron` (a cron string or `Schedule(expression, input=...)`, or a list of named ones).
    A flow class may be an attrs class holding the services its steps use; workers call its steps on an instance.
    """

    __pgflow__: ClassVar[FlowDef]

    def __init_subclass__(
        cls,
        *,
        slug: str | None = None,
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        cron: str | Schedule | Sequence[Schedule] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if "__pgflow__" in cls.__dict__:
            return  # attrs rebuilt the class; the definition is already resolved
        localns = dict(sys._getframe(1).f_locals)
        flow = _define_flow(cls, slug, Options(max_attempts, base_delay, timeout), localns)
        cls.__pgflow__ = _with_schedules(flow, cron)


def _define_job(cls: type, queue: str | None, options: Options, localns: dict[str, Any]) -> FlowDef:
    origin = _origin(cls)
    args = _generic_args(cls, Job)
    if args is None:
        raise DefinitionError(f"{origin}: declare its input and output types: class {origin}(Job[In, Out])")
    input_type, output_type = (_norm(a) for a in args)
    perform = cls.__dict__.get(JOB_STEP) or getattr(cls, JOB_STEP, None)
    if perform is None or perform is Job.perform:
        raise DefinitionError(f"{origin}: define `async def perform(self, input: In, ctx: Context) -> Out`")
    if not inspect.iscoroutinefunction(perform):
        raise DefinitionError(f"{origin}.perform is not async: define it with `async def`")
    hints = _hints(perform, cls, localns, origin)
    if "return" not in hints:
        raise DefinitionError(f"{origin}.perform has no return annotation: annotate what the job returns")
    raw = _Raw(JOB_STEP, perform, _StepMark("single", Options()), hints, _norm(hints["return"]))
    params = _resolve_params(raw, {JOB_STEP: raw}, input_type, origin)
    step_def = StepDef(JOB_STEP, "single", (), Options(), perform, tuple(params), raw.output)
    flow = build_flow(
        queue if queue is not None else _snake(cls.__name__),
        [step_def],
        options=options,
        origin=origin,
        input_type=input_type,
        output_type=output_type,
        is_job=True,
        typed=True,
        slug_label="queue",
    )
    return attrs.evolve(flow, result_mode=_result_mode(output_type, flow.steps, flow.leaves, origin))


class Job(Definition[In, Out]):
    """Base class of background jobs (one-step flows): `class SendEmail(Job[Email, None], queue="send_email")`
    with `async def perform(self, email: Email, ctx: Context) -> None`.

    Class keywords: `queue` (the flow slug; default: the class name in snake_case), `max_attempts`, `base_delay`,
    `timeout`, `cron`.
    """

    __pgflow__: ClassVar[FlowDef]

    def __init_subclass__(
        cls,
        *,
        queue: str | None = None,
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        cron: str | Schedule | Sequence[Schedule] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if "__pgflow__" in cls.__dict__:
            return
        localns = dict(sys._getframe(1).f_locals)
        job = _define_job(cls, queue, Options(max_attempts, base_delay, timeout), localns)
        cls.__pgflow__ = _with_schedules(job, cron)

    async def perform(self, input: In, ctx: Context) -> Out:
        """Override: the job's work."""
        raise NotImplementedError


def definition_of(target: object) -> FlowDef:
    """The FlowDef of a flow or job class (or instance), or of a FlowDef itself."""
    if isinstance(target, FlowDef):
        return target
    found = getattr(target, "__pgflow__", None)
    if isinstance(found, FlowDef):
        return found
    raise DefinitionError(f"{target!r} is not a flow or job: derive it from Flow[In, Out] or Job[In, Out]")
