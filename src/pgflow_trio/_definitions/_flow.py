"""Typed flows and jobs. A flow is a class deriving from `Flow[In, Out]`; its `@step` / `@map_step` async methods
declare their dependencies through their parameters, resolved from type hints when the class is defined. Each
parameter is resolved by the first rule that applies, and a parameter two sources could fill is an error:

1. annotated `Context` or `Context[In]`: the task context;
2. a default `needs(step)` / `needs_all(map_step)` / `needs_input()`: that step's output, or the flow input;
3. named after another step: that step's output (its type must match);
4. otherwise by type: the one source providing exactly the annotated type, among the flow input and every step's
   output (a map step's output is the list of its results). A map step's element parameter takes one element of
   the list its source provides. No source is an error; several sources are an error that names them all.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    overload,
)

import attrs

from pgflow_trio._definitions._build import build_flow
from pgflow_trio._definitions._context import Context
from pgflow_trio._definitions._model import (
    FlowDef,
    HandlerParam,
    Options,
    ParamKind,
    ResultMode,
    StepDef,
    StepType,
    leaves_of,
)
from pgflow_trio._definitions._schedule import Schedule
from pgflow_trio._exceptions import DefinitionError

In = TypeVar("In")
Out = TypeVar("Out")
Out_co = TypeVar("Out_co", covariant=True)
R = TypeVar("R")
S = TypeVar("S")
P = ParamSpec("P")
Handler = TypeVar("Handler", bound=Callable[..., Coroutine[Any, Any, Any]])

JOB_STEP = "perform"
_MARK = "__pgflow_step__"


@attrs.frozen
class _StepMark:
    step_type: StepType
    options: Options


@attrs.frozen
class _Needs:
    fn: Callable[..., Any] | None  # None: the flow input
    mapped: bool


if TYPE_CHECKING:

    class MapStep(Generic[S, P, R]):
        """For the type checker only: what `@map_step` gives (at run time, the marked function itself).

        Bound to an instance it is the handler (`await flow.square(3)`); in the class body it is what `needs_all`
        accepts and `needs` refuses, so mypy tells a map step from a single step.
        """

        @overload
        def __get__(self, instance: None, owner: type[Any], /) -> MapStep[S, P, R]: ...
        @overload
        def __get__(self, instance: S, owner: type[Any], /) -> Callable[P, Coroutine[Any, Any, R]]: ...
        def __get__(self, instance: Any, owner: type[Any], /) -> Any: ...


class _MapDecorator(Protocol):
    def __call__(self, fn: Callable[Concatenate[S, P], Coroutine[Any, Any, R]], /) -> MapStep[S, P, R]: ...


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
def map_step(fn: Callable[Concatenate[S, P], Coroutine[Any, Any, R]], /) -> MapStep[S, P, R]: ...
@overload
def map_step(
    *,
    max_attempts: int | None = None,
    base_delay: int | None = None,
    timeout: int | None = None,
    start_delay: int | None = None,
) -> _MapDecorator: ...
def map_step(
    fn: Callable[..., Coroutine[Any, Any, Any]] | None = None,
    /,
    *,
    max_attempts: int | None = None,
    base_delay: int | None = None,
    timeout: int | None = None,
    start_delay: int | None = None,
) -> Any:
    """Mark an `async def` method as a map step: it runs once per element of a list (the flow input, or the output
    of the one step its parameter names) and its dependents receive the list of its results, in order."""
    options = Options(max_attempts, base_delay, timeout, start_delay)
    if fn is not None:
        return _mark(fn, "map", options)
    return lambda f: _mark(f, "map", options)


def needs(producer: Callable[..., Coroutine[Any, Any, R]]) -> R:
    """Default value pinning a parameter to a single step: `charge: Charge = needs(charge_card)`."""
    return cast(R, _Needs(producer, mapped=False))


def needs_all(producer: MapStep[Any, Any, R]) -> list[R]:
    """Default value pinning a parameter to a map step, whose results arrive as a list."""
    return cast(list[R], _Needs(cast(Callable[..., Any], producer), mapped=True))


def needs_input() -> Any:
    """Default value pinning a parameter to the flow input (in a map step: one element of it), for when a step's
    output has the same type: `order: OrderInput = needs_input()`."""
    return _Needs(None, mapped=False)


_REBUILT = (list, dict, tuple, set, frozenset)


def _norm(tp: Any) -> Any:
    """One spelling per type, so that `List[int]`, `list[int]`, `Optional[A]` and `A | None` compare equal."""
    origin = get_origin(tp)
    if origin in _REBUILT:
        return origin[tuple(_norm(a) for a in get_args(tp))]
    if _is_union(tp):
        return Union[tuple(_norm(a) for a in get_args(tp))]  # noqa: UP007 - built from a tuple
    return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, type(int | None))


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

    @property
    def is_map(self) -> bool:
        return self.mark.step_type == "map"

    @property
    def dependent_type(self) -> Any:
        """What dependents receive: the output, or the list of outputs of a map step."""
        return list[self.output] if self.is_map else self.output  # type: ignore[name-defined]


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


_FLOW_INPUT = "the flow input"


@attrs.frozen
class _Scope:
    """What a step's parameters can be resolved against."""

    raw: _Raw
    steps: dict[str, _Raw]
    input_type: Any
    where: str

    @property
    def others(self) -> list[_Raw]:
        return [s for s in self.steps.values() if s.slug != self.raw.slug]


def _resolve_params(raw: _Raw, steps: dict[str, _Raw], input_type: Any, origin: str) -> list[HandlerParam]:
    """Where each handler parameter's value comes from, by the rules in this module's docstring."""
    scope = _Scope(raw, steps, input_type, f"{origin}.{raw.slug}")
    params = list(inspect.signature(raw.fn).parameters.values())[1:]  # skip self
    resolved = [_resolve_param(p, scope) for p in params]
    if raw.is_map and sum(1 for r in resolved if r.kind is ParamKind.ELEMENT) != 1:
        raise DefinitionError(
            f"{scope.where}: a map step takes exactly one element parameter (plus an optional Context); it has "
            f"{', '.join(p.name for p in params) or 'none'}"
        )
    return resolved


def _resolve_param(p: inspect.Parameter, scope: _Scope) -> HandlerParam:
    where = scope.where
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
        raise DefinitionError(f"{where}: *{p.name} is not supported; declare each dependency as a parameter")
    if p.kind is p.POSITIONAL_ONLY:
        raise DefinitionError(
            f"{where}: parameter {p.name!r} is positional-only; handlers receive their arguments by name: remove the /"
        )
    if p.name not in scope.raw.hints:
        raise DefinitionError(f"{where}: parameter {p.name!r} has no annotation; annotate it with the type it needs")
    hint = _norm(scope.raw.hints[p.name])
    if _mentions_context(hint):
        return _context_param(p.name, hint, scope)
    if isinstance(p.default, _Needs):
        return _pinned_param(p.name, hint, p.default, scope)
    if p.default is not p.empty:
        raise DefinitionError(
            f"{where}: parameter {p.name!r} has a default ({p.default!r}) that would never be used: every parameter "
            "receives a value from the flow; remove the default, or pin the source with needs(step), "
            "needs_all(map_step) or needs_input()"
        )
    named = scope.steps.get(p.name)
    if named is not None and named is not scope.raw:
        return _step_param(p.name, hint, named, scope)
    return _param_by_type(p.name, hint, scope)


def _mentions_context(tp: Any) -> bool:
    if tp is Context or get_origin(tp) is Context:
        return True
    if isinstance(tp, type) and issubclass(tp, Context):
        return True
    return any(_mentions_context(arg) for arg in get_args(tp))


def _context_param(name: str, hint: Any, scope: _Scope) -> HandlerParam:
    """`Context` or `Context[In]`; anything else mentioning Context (a subclass, Optional, a list) is an error."""
    expected = f"Context[{_name(scope.input_type)}]"
    if hint is not Context and get_origin(hint) is not Context:
        raise DefinitionError(
            f"{scope.where}: parameter {name!r} is annotated {_name(hint)}; the task context is always a plain "
            f"Context: annotate it {expected} (or Context)"
        )
    (given,) = get_args(hint) or (Any,)
    if given is not Any and _norm(given) != scope.input_type:
        raise DefinitionError(
            f"{scope.where}: parameter {name!r} is annotated Context[{_name(given)}] but the flow input is "
            f"{_name(scope.input_type)}; annotate it {expected} (or Context)"
        )
    return HandlerParam(name, ParamKind.CONTEXT, hint)


def _wanted(hint: Any, scope: _Scope) -> Any:
    """The type a source must provide: the annotation, or for a map step's element the list of them."""
    return _norm(list[hint]) if scope.raw.is_map else hint


def _input_fits(hint: Any, scope: _Scope) -> bool:
    return bool(_wanted(hint, scope) == scope.input_type)


def _step_fits(hint: Any, producer: _Raw, scope: _Scope) -> bool:
    return bool(_wanted(hint, scope) == producer.dependent_type)


def _input_param(name: str, hint: Any, scope: _Scope) -> HandlerParam:
    if scope.raw.is_map:
        return HandlerParam(name, ParamKind.ELEMENT, hint)
    return HandlerParam(name, ParamKind.FLOW_INPUT, hint)


def _step_param(name: str, hint: Any, producer: _Raw, scope: _Scope) -> HandlerParam:
    if not _step_fits(hint, producer, scope):
        expected = _name(producer.dependent_type)
        if scope.raw.is_map:
            expected = f"{expected}, whose elements a map step receives"
        raise DefinitionError(
            f"{scope.where}: parameter {name!r} is annotated {_name(hint)} but step {producer.slug!r} "
            f"produces {expected}; annotate it accordingly"
        )
    kind = ParamKind.ELEMENT if scope.raw.is_map else ParamKind.DEPENDENCY
    return HandlerParam(name, kind, hint, producer.slug)


def _pinned_param(name: str, hint: Any, pin: _Needs, scope: _Scope) -> HandlerParam:
    if pin.fn is None:
        if not _input_fits(hint, scope):
            wanted = f"list[{_name(hint)}]" if scope.raw.is_map else _name(hint)
            raise DefinitionError(
                f"{scope.where}: parameter {name!r} = needs_input() needs the flow input to be {wanted}, but it is "
                f"{_name(scope.input_type)}; annotate it accordingly"
            )
        return _input_param(name, hint, scope)
    producer = next((s for s in scope.steps.values() if s.fn is pin.fn), None)
    if producer is None:
        raise DefinitionError(f"{scope.where}: parameter {name!r} needs a function that is not a step of the flow")
    if pin.mapped != producer.is_map:
        fix = "needs_all" if producer.is_map else "needs"
        raise DefinitionError(f"{scope.where}: parameter {name!r} refers to step {producer.slug!r}: use {fix}()")
    return _step_param(name, hint, producer, scope)


def _param_by_type(name: str, hint: Any, scope: _Scope) -> HandlerParam:
    producers = [s for s in scope.others if _step_fits(hint, s, scope)]
    from_input = _input_fits(hint, scope)
    wanted = f"list[{_name(hint)}]" if scope.raw.is_map else _name(hint)
    if from_input and not producers:
        return _input_param(name, hint, scope)
    if len(producers) == 1 and not from_input:
        return _step_param(name, hint, producers[0], scope)
    if not producers:
        raise _nothing_provides(name, hint, wanted, scope)
    sources = ([_FLOW_INPUT] if from_input else []) + [f"step {s.slug!r}" for s in producers]
    pins = [f"{'needs_all' if s.is_map else 'needs'}({s.slug})" for s in producers]
    if from_input:
        pins.append("needs_input() for the flow input")
    both = "both" if len(sources) == 2 else "all"
    raise DefinitionError(
        f"{scope.where}: parameter {name!r} ({_name(hint)}) is ambiguous: {_and(sources)} {both} provide {wanted}; "
        f"name the parameter after the step it needs ({_and([s.slug for s in producers], 'or')}), or pin the source "
        f"with a default: {_and(pins, 'or')}"
    )


def _and(items: list[str], word: str = "and") -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


def _nothing_provides(name: str, hint: Any, wanted: str, scope: _Scope) -> DefinitionError:
    if (
        scope.raw.is_map
        and get_origin(scope.input_type) is not list
        and not any(get_origin(s.dependent_type) is list for s in scope.others)
    ):
        return DefinitionError(
            f"{scope.where}: a map step runs over a list, but the flow input {_name(scope.input_type)} is not a list "
            f"and no step returns one; declare the flow input as list[{_name(hint)}] or map over a step "
            "that returns a list"
        )
    return DefinitionError(
        f"{scope.where}: parameter {name!r} needs {wanted}, but neither the flow input "
        f"({_name(scope.input_type)}) nor any step provides it; annotate it with the flow input type, a step's "
        "return type, or Context"
    )


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


def _define_flow(
    cls: type,
    slug: str | None,
    options: Options,
    cron: str | Schedule | Sequence[Schedule] | None,
    localns: dict[str, Any],
) -> FlowDef:
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
    leaves = leaves_of(steps)
    return build_flow(
        slug if slug is not None else _snake(cls.__name__),
        steps,
        options=options,
        origin=origin,
        input_type=input_type,
        output_type=output_type,
        result_mode=_result_mode(output_type, tuple(steps), leaves, origin) if leaves else "raw",  # none: a cycle
        schedules=cron,
        typed=True,
    )


class Definition(Generic[In, Out]):
    """What flows and jobs have in common for typing: they take `In` and produce `Out`."""

    __pgflow__: ClassVar[FlowDef]

    if TYPE_CHECKING:

        @classmethod
        def __pgflow_run__(cls, input: In) -> Out:
            """For the type checker only: running the flow takes `In` and gives `Out`. `run_inline` binds its
            arguments to this signature, so a wrong input is reported as "expected In"."""


class RunSignature(Protocol[P, Out_co]):
    """For typing a function that takes a flow or job (class or instance) and its input: bind `P` and `Out` from the
    flow with `flow: RunSignature[P, Out], /, *args: P.args, **kwargs: P.kwargs`, and mypy checks the input
    argument against the flow's input type, reporting `Argument 2 ... has incompatible type "X"; expected "In"`
    (a plain `flow: type[Definition[In, Out]], input: In` only says `Cannot infer value of type parameter "In"`)."""

    def __pgflow_run__(self, *args: P.args, **kwargs: P.kwargs) -> Out_co: ...


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
        cls.__pgflow__ = _define_flow(cls, slug, Options(max_attempts, base_delay, timeout), cron, localns)


def _define_job(
    cls: type,
    queue: str | None,
    options: Options,
    cron: str | Schedule | Sequence[Schedule] | None,
    localns: dict[str, Any],
) -> FlowDef:
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
    return build_flow(
        queue if queue is not None else _snake(cls.__name__),
        [step_def],
        options=options,
        origin=origin,
        input_type=input_type,
        output_type=output_type,
        result_mode=_result_mode(output_type, (step_def,), (JOB_STEP,), origin),
        schedules=cron,
        is_job=True,
        typed=True,
        slug_label="queue",
    )


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
        cls.__pgflow__ = _define_job(cls, queue, Options(max_attempts, base_delay, timeout), cron, localns)

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
