"""Typed flows, jobs and plain-data specs become one FlowDef; every validation error says what to change."""

from __future__ import annotations

from typing import Any, List, Optional  # noqa: UP035 - the other spellings on purpose

import attrs
import pytest

from pgflow_trio import (
    Context,
    DefinitionError,
    Flow,
    FlowDef,
    Job,
    Options,
    Schedule,
    StepDef,
    compile_flow,
    definition_of,
    flow_from_spec,
    map_step,
    needs,
    needs_all,
    needs_input,
    spec_of,
    step,
)
from pgflow_trio._definitions._build import build_flow
from pgflow_trio._definitions._diff import Difference, flow_differences
from pgflow_trio._definitions._model import ParamKind
from pgflow_trio._definitions._spec import CronSpec, FlowSpec, StepSpec, parse_spec


@attrs.frozen
class In:
    n: int


@attrs.frozen
class A:
    a: int


@attrs.frozen
class B:
    b: int


@attrs.frozen
class Done:
    ok: bool


class Linear(Flow[In, Done], max_attempts=2, timeout=10):
    @step
    async def first(self, inp: In) -> A:
        return A(inp.n)

    @step(base_delay=3)
    async def second(self, a: A, ctx: Context) -> B:
        return B(a.a)

    @step
    async def last(self, b: B, inp: In) -> Done:
        return Done(True)


def test_typed_flow_resolves_dependencies_from_annotations() -> None:
    flow = definition_of(Linear)
    assert flow.slug == "linear"
    assert [s.slug for s in flow.steps] == ["first", "second", "last"]
    assert flow.step("second").deps == ("first",)
    assert flow.step("last").deps == ("second",)
    kinds = {p.name: p.kind for p in flow.step("last").params}
    assert kinds == {"b": ParamKind.DEPENDENCY, "inp": ParamKind.FLOW_INPUT}
    assert [p.kind for p in flow.step("second").params] == [ParamKind.DEPENDENCY, ParamKind.CONTEXT]
    assert flow.options == Options(max_attempts=2, timeout=10)
    assert flow.result_mode == "leaf"
    assert isinstance(flow, FlowDef)


def test_steps_may_be_defined_in_any_order_and_come_out_dependencies_first() -> None:
    class Backwards(Flow[In, Done]):
        @step
        async def end(self, a: A) -> Done:
            return Done(True)

        @step
        async def start(self, inp: In) -> A:
            return A(1)

    assert [s.slug for s in definition_of(Backwards).steps] == ["start", "end"]


def test_same_type_from_two_steps_is_resolved_by_parameter_name() -> None:
    class TwoA(Flow[In, Done]):
        @step
        async def left(self, inp: In) -> A:
            return A(1)

        @step
        async def right(self, inp: In) -> A:
            return A(2)

        @step
        async def join(self, left: A, right: A) -> Done:
            return Done(True)

    assert definition_of(TwoA).step("join").deps == ("left", "right")


def test_ambiguous_dependency_names_the_candidates() -> None:
    with pytest.raises(
        DefinitionError,
        match=r"ambiguous: step 'left' and step 'right' both provide A; name the parameter after the step it needs "
        r"\(left or right\), or pin the source with a default: needs\(left\) or needs\(right\)",
    ):

        class Ambiguous(Flow[In, Done]):
            @step
            async def left(self, inp: In) -> A:
                return A(1)

            @step
            async def right(self, inp: In) -> A:
                return A(2)

            @step
            async def join(self, value: A) -> Done:
                return Done(True)


def test_map_output_of_the_flow_input_type_is_ambiguous_not_the_flow_input() -> None:
    with pytest.raises(
        DefinitionError,
        match=r"Squares.total: parameter 'squares' \(list\[int\]\) is ambiguous: the flow input and step 'sq' both "
        r"provide list\[int\]; name the parameter after the step it needs \(sq\), or pin the source with a default: "
        r"needs_all\(sq\) or needs_input\(\) for the flow input",
    ):

        class Squares(Flow[list[int], dict[str, Any]]):
            @map_step
            async def sq(self, x: int) -> int:
                return x * x

            @step
            async def total(self, squares: list[int]) -> int:
                return sum(squares)


def test_a_single_steps_output_of_the_flow_input_type_is_ambiguous() -> None:
    with pytest.raises(
        DefinitionError, match=r"'n' \(int\) is ambiguous: the flow input and step 'inc' both provide int"
    ):

        class Ints(Flow[int, int]):
            @step
            async def double(self, n: int) -> int:
                return n * 2

            @step
            async def inc(self, double: int) -> int:
                return double + 1


def test_map_element_from_the_flow_input_or_a_steps_list_is_ambiguous() -> None:
    with pytest.raises(
        DefinitionError, match=r"Each.each: parameter 'n' \(int\) is ambiguous: the flow input and step "
    ):

        class Each(Flow[list[int], list[int]]):
            @step
            async def evens(self, numbers: list[int] = needs_input()) -> list[int]:
                return [n for n in numbers if n % 2 == 0]

            @map_step
            async def each(self, n: int) -> int:
                return n

    class OverStep(Flow[list[int], list[int]]):
        @step
        async def evens(self, numbers: list[int] = needs_input()) -> list[int]:
            return [n for n in numbers if n % 2 == 0]

        @map_step
        async def each(self, evens: int) -> int:
            return evens

    class OverInput(Flow[list[int], dict[str, Any]]):
        @step
        async def evens(self, numbers: list[int] = needs_input()) -> list[int]:
            return [n for n in numbers if n % 2 == 0]

        @map_step
        async def each(self, n: int = needs_input()) -> int:
            return n

    assert definition_of(OverStep).step("each").deps == ("evens",)
    assert definition_of(OverStep).step("evens").params[0].kind is ParamKind.FLOW_INPUT
    assert definition_of(OverInput).step("each").deps == ()
    assert definition_of(OverInput).step("each").params[0].kind is ParamKind.ELEMENT


def test_a_parameter_named_after_a_step_takes_that_step_even_when_the_flow_input_has_its_type() -> None:
    class Named(Flow[list[int], int]):
        @map_step
        async def sq(self, x: int) -> int:
            return x * x

        @step
        async def total(self, sq: list[int]) -> int:
            return sum(sq)

    assert definition_of(Named).step("total").deps == ("sq",)


def test_needs_input_checks_the_flow_input_type() -> None:
    with pytest.raises(DefinitionError, match=r"'a' = needs_input\(\) needs the flow input to be A, but it is In"):

        class WrongInput(Flow[In, A]):
            @step
            async def only(self, a: A = needs_input()) -> A:
                return a


def test_a_default_that_would_never_be_used_is_an_error() -> None:
    with pytest.raises(DefinitionError, match=r"parameter 'inp' has a default \(None\) that would never be used"):

        class Defaulted(Flow[In, A]):
            @step
            async def only(self, inp: In | None = None) -> A:
                return A(1)


def test_positional_only_parameters_are_refused() -> None:
    with pytest.raises(DefinitionError, match=r"parameter 'inp' is positional-only; .* remove the /"):

        class Positional(Flow[In, A]):
            @step
            async def only(self, inp: In, /) -> A:
                return A(1)


def test_optional_annotations_match_exactly_in_any_spelling() -> None:
    class Opt(Flow[In, Done]):
        @step
        async def maybe(self, inp: In) -> Optional[A]:  # noqa: UP045 - the other spelling on purpose
            return None

        @step
        async def last(self, a: A | None) -> Done:
            return Done(a is None)

    assert definition_of(Opt).step("last").deps == ("maybe",)

    with pytest.raises(DefinitionError, match=r"parameter 'a' needs Optional\[A\], but neither the flow input"):

        class NotOptional(Flow[In, Done]):
            @step
            async def surely(self, inp: In) -> A:
                return A(1)

            @step
            async def last(self, a: A | None) -> Done:
                return Done(True)


def test_typing_aliases_are_the_same_types() -> None:
    class Aliased(Flow[List[int], int]):  # noqa: UP006 - the other spelling on purpose
        @map_step
        async def each(self, n: int) -> int:
            return n

        @step
        async def total(self, each: List[int]) -> int:  # noqa: UP006
            return sum(each)

    assert definition_of(Aliased).step("total").deps == ("each",)


class MyContext(Context[In]):
    pass


def test_context_annotations() -> None:
    class Typed(Flow[In, A]):
        @step
        async def only(self, ctx: Context[In]) -> A:
            return A(ctx.flow_input.n)

    class Untyped(Flow[In, A]):
        @step
        async def only(self, ctx: Context[Any], bare: Context) -> A:
            return A(1)

    assert [p.kind for p in definition_of(Typed).step("only").params] == [ParamKind.CONTEXT]
    assert [p.kind for p in definition_of(Untyped).step("only").params] == [ParamKind.CONTEXT] * 2

    with pytest.raises(
        DefinitionError, match=r"'ctx' is annotated Context\[A\] but the flow input is In; annotate it Context\[In\]"
    ):

        class Mismatch(Flow[In, A]):
            @step
            async def only(self, ctx: Context[A]) -> A:
                return A(1)

    with pytest.raises(DefinitionError, match=r"'ctx' is annotated Context\[int\] but the flow input is In"):

        class JobMismatch(Job[In, None]):
            async def perform(self, inp: In, ctx: Context[int]) -> None:
                return None

    for annotation in (MyContext, Optional[Context], list[Context]):  # noqa: UP045
        with pytest.raises(DefinitionError, match=r"the task context is always a plain Context: annotate it Context"):

            class Odd(Flow[In, A]):
                @step
                async def only(self, ctx: annotation) -> A:  # type: ignore[valid-type]
                    return A(1)


def test_unknown_dependency_says_what_to_annotate() -> None:
    with pytest.raises(DefinitionError, match=r"Unknown.only: parameter 'b' needs B, but neither the flow input"):

        class Unknown(Flow[In, Done]):
            @step
            async def only(self, b: B) -> Done:
                return Done(True)


def test_parameter_named_after_a_step_must_have_its_type() -> None:
    with pytest.raises(DefinitionError, match=r"parameter 'first' is annotated B but step 'first' produces A"):

        class Mismatch(Flow[In, Done]):
            @step
            async def first(self, inp: In) -> A:
                return A(1)

            @step
            async def second(self, first: B) -> Done:
                return Done(True)


def test_needs_pins_a_producer_and_checks_its_type() -> None:
    class Pinned(Flow[In, dict[str, Any]]):
        @step
        async def left(self, inp: In) -> A:
            return A(1)

        @step
        async def right(self, inp: In) -> A:
            return A(2)

        @step
        async def join(self, value: A = needs(right)) -> Done:
            return Done(True)

    assert definition_of(Pinned).step("join").deps == ("right",)

    with pytest.raises(DefinitionError, match=r"parameter 'value' is annotated B but step 'left' produces A"):

        class WrongPin(Flow[In, Done]):
            @step
            async def left(self, inp: In) -> A:
                return A(1)

            @step
            async def join(self, value: B = needs(left)) -> Done:  # type: ignore[arg-type]
                return Done(True)


def test_needs_all_is_for_map_steps() -> None:
    with pytest.raises(DefinitionError, match=r"refers to step 'each': use needs_all\(\)"):

        class WrongNeeds(Flow[list[int], str]):
            @map_step
            async def each(self, n: int) -> int:
                return n

            @step
            async def total(self, values: int = needs(each)) -> str:  # type: ignore[arg-type]
                return str(values)

    class RightNeeds(Flow[list[int], int]):
        @map_step
        async def each(self, n: int) -> int:
            return n

        @step
        async def total(self, values: list[int] = needs_all(each)) -> int:
            return sum(values)

    assert definition_of(RightNeeds).step("total").deps == ("each",)


def test_cycle_is_reported_with_its_path() -> None:
    with pytest.raises(DefinitionError, match=r"dependency cycle (a -> b -> a|b -> a -> b)"):
        flow_from_spec(
            {"slug": "cyc", "steps": [{"slug": "a", "deps": ["b"]}, {"slug": "b", "deps": ["a"]}]}, origin="cyc.json"
        )


def test_typed_cycle_is_reported() -> None:
    with pytest.raises(DefinitionError, match=r"dependency cycle"):

        class Cycle(Flow[In, Done]):
            @step
            async def a(self, b: B) -> A:
                return A(1)

            @step
            async def b(self, a: A) -> B:
                return B(1)

            @step
            async def c(self, a: A, inp: In) -> Done:
                return Done(True)


def test_self_dependency_is_rejected() -> None:
    with pytest.raises(DefinitionError, match=r"step 'a' depends on itself"):
        flow_from_spec({"slug": "s", "steps": [{"slug": "a", "deps": ["a"]}]})


def test_duplicate_slug() -> None:
    with pytest.raises(DefinitionError, match=r"step 'a' is defined twice; step slugs must be unique"):
        flow_from_spec({"slug": "s", "steps": [{"slug": "a"}, {"slug": "a"}]})


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("", "must not be empty"),
        ("x" * 129, "is 129 characters long; the limit is 128"),
        ("1abc", "must not start with a digit"),
        ("_abc", "must not start with an underscore"),
        ("a b", "must not contain whitespace"),
        ("a-b", r"must not contain / : # - or \?"),
        ("a/b", r"must not contain / : # - or \?"),
        ("a?b", r"must not contain / : # - or \?"),
        ("café", "may contain only ASCII letters, digits and underscores"),
        ("a.b", "may contain only ASCII letters, digits and underscores"),
        ("run", r"is reserved \(run\)"),
    ],
)
def test_slug_rules_of_the_dsl_and_the_sql_side(slug: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=f"flow slug .* {message}"):
        flow_from_spec({"slug": slug, "steps": [{"slug": "a"}]})
    with pytest.raises(DefinitionError, match=f"step slug .* {message}"):
        flow_from_spec({"slug": "ok", "steps": [{"slug": slug}]})


def test_step_named_run_in_a_typed_flow_is_rejected() -> None:
    with pytest.raises(DefinitionError, match=r"step slug 'run' is reserved"):

        class Runner(Flow[In, A]):
            @step
            async def run(self, inp: In) -> A:
                return A(1)


def test_a_128_character_slug_is_fine() -> None:
    assert flow_from_spec({"slug": "a" * 128, "steps": [{"slug": "b" * 128}]}).slug == "a" * 128


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1, got 0"),
        ({"base_delay": 0}, "base_delay must be >= 1, got 0"),
        ({"timeout": 2}, "timeout must be >= 3, got 2"),
        ({"start_delay": -1}, "start_delay must be >= 0, got -1"),
    ],
)
def test_option_ranges(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=f"step 'a'.*{message}"):
        flow_from_spec({"slug": "f", "steps": [{"slug": "a", **options}]})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 3.5}, r"expected an integer, got the number 3.5 @ \$\.steps\[0\]\.timeout"),
        ({"max_attempts": True}, r"expected an integer, got the boolean true @ \$\.steps\[0\]\.max_attempts"),
        ({"base_delay": "5"}, r"expected an integer, got the string '5' @ \$\.steps\[0\]\.base_delay"),
    ],
)
def test_option_types_are_checked_with_their_path(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        flow_from_spec({"slug": "f", "steps": [{"slug": "a", **options}]})


def test_start_delay_is_a_step_option_only() -> None:
    with pytest.raises(DefinitionError, match=r"unknown keys \['start_delay'\]"):
        flow_from_spec({"slug": "f", "start_delay": 1, "steps": [{"slug": "a"}]})
    with pytest.raises(DefinitionError, match=r"flow.*timeout must be >= 3"):

        class Short(Flow[In, A], timeout=1):
            @step
            async def a(self, inp: In) -> A:
                return A(1)


def test_map_step_with_two_dependencies_is_rejected() -> None:
    with pytest.raises(
        DefinitionError, match=r"map step takes its array from at most one step, but it depends on a, b"
    ):
        flow_from_spec(
            {
                "slug": "f",
                "steps": [{"slug": "a"}, {"slug": "b"}, {"slug": "m", "step_type": "map", "deps": ["a", "b"]}],
            }
        )


def test_root_map_needs_a_list_input() -> None:
    with pytest.raises(DefinitionError, match=r"the flow input In is not a list and no step returns one; declare"):

        class NotAList(Flow[In, list[int]]):
            @map_step
            async def each(self, n: int) -> int:
                return n


def test_map_step_takes_one_element() -> None:
    with pytest.raises(DefinitionError, match=r"map step takes exactly one element parameter"):

        class TwoElements(Flow[list[int], list[int]]):
            @step
            async def other(self, items: list[int] = needs_input()) -> list[int]:
                return items

            @map_step
            async def each(self, n: int = needs_input(), other: int = needs(other)) -> int:  # type: ignore[assignment]
                return n


def test_typed_maps_root_and_dependent() -> None:
    class Maps(Flow[list[str], int]):
        @map_step
        async def lengths(self, word: str) -> int:
            return len(word)

        @map_step(timeout=5)
        async def doubled(self, n: int) -> int:
            return n * 2

        @step
        async def total(self, doubled: list[int]) -> int:
            return sum(doubled)

    flow = definition_of(Maps)
    assert flow.step("lengths").deps == ()
    assert flow.step("doubled").deps == ("lengths",)
    assert compile_flow(flow) == [
        "SELECT pgflow.create_flow('maps');",
        "SELECT pgflow.add_step('maps', 'lengths', step_type => 'map');",
        "SELECT pgflow.add_step('maps', 'doubled', ARRAY['lengths'], timeout => 5, step_type => 'map');",
        "SELECT pgflow.add_step('maps', 'total', ARRAY['doubled']);",
    ]


def test_sync_handler_is_rejected() -> None:
    with pytest.raises(DefinitionError, match=r"Sync.a is not async: define steps with `async def`"):

        class Sync(Flow[In, A]):
            @step  # type: ignore[type-var]
            def a(self, inp: In) -> A:
                return A(1)


def test_missing_annotations() -> None:
    with pytest.raises(DefinitionError, match=r"parameter 'inp' has no annotation"):

        class NoParam(Flow[In, A]):
            @step
            async def a(self, inp) -> A:  # type: ignore[no-untyped-def]
                return A(1)

    with pytest.raises(DefinitionError, match=r"NoReturn.a has no return annotation"):

        class NoReturn(Flow[In, A]):
            @step
            async def a(self, inp: In):  # type: ignore[no-untyped-def]
                return A(1)


def test_flow_without_type_arguments_or_steps() -> None:
    with pytest.raises(DefinitionError, match=r"declare its input and output types: class Bare\(Flow\[In, Out\]\)"):

        class Bare(Flow):  # type: ignore[type-arg]
            @step
            async def a(self, inp: In) -> A:
                return A(1)

    with pytest.raises(DefinitionError, match=r"a flow needs at least one step"):

        class Empty(Flow[In, A]):
            pass


def test_declared_output_must_match_the_leaves() -> None:
    with pytest.raises(DefinitionError, match=r"declared output B does not match the run's output \{a: A\}"):

        class WrongOut(Flow[In, B]):
            @step
            async def a(self, inp: In) -> A:
                return A(1)


def test_record_output_for_several_leaves() -> None:
    @attrs.frozen
    class Both:
        left: A
        right: B

    class TwoLeaves(Flow[In, Both]):
        @step
        async def left(self, inp: In) -> A:
            return A(1)

        @step
        async def right(self, inp: In) -> B:
            return B(2)

    assert definition_of(TwoLeaves).result_mode == "record"


def test_unresolvable_annotation_says_where_to_define_it() -> None:
    with pytest.raises(
        DefinitionError, match=r"cannot resolve an annotation .*Later.*define that type at module level"
    ):

        class Early(Flow[In, A]):
            @step
            async def a(self, inp: In, later: Later) -> A:  # type: ignore[name-defined]  # noqa: F821
                return A(1)


def test_job_compiles_like_a_one_step_flow() -> None:
    class SendReport(Job[In, None], queue="reports", max_attempts=5, timeout=120):
        async def perform(self, inp: In, ctx: Context) -> None:
            return None

    flow = definition_of(SendReport)
    assert flow.is_job
    assert compile_flow(flow) == [
        "SELECT pgflow.create_flow('reports', max_attempts => 5, timeout => 120);",
        "SELECT pgflow.add_step('reports', 'perform');",
    ]


def test_job_errors() -> None:
    with pytest.raises(DefinitionError, match=r"NoPerform: define `async def perform"):

        class NoPerform(Job[In, None]):
            pass

    with pytest.raises(DefinitionError, match=r"SyncJob.perform is not async"):

        class SyncJob(Job[In, None]):
            def perform(self, inp: In, ctx: Context) -> None:  # type: ignore[override]
                return None

    with pytest.raises(DefinitionError, match=r"queue.*must not contain / : # - or"):

        class BadQueue(Job[In, None], queue="send-email"):
            async def perform(self, inp: In, ctx: Context) -> None:
                return None


def test_spec_shape_errors_give_the_path() -> None:
    with pytest.raises(DefinitionError, match=r"required field missing @ \$\.steps$"):
        flow_from_spec({"slug": "f"})
    with pytest.raises(DefinitionError, match=r"expected an array, got the string 'a' @ \$\.steps\[1\]\.deps"):
        flow_from_spec({"slug": "f", "steps": [{"slug": "a"}, {"slug": "b", "deps": "a"}]})
    with pytest.raises(DefinitionError, match=r"must be 'single' or 'map', got 'fan' @ \$\.steps\[0\]\.step_type"):
        flow_from_spec({"slug": "f", "steps": [{"slug": "a", "step_type": "fan"}]})
    with pytest.raises(DefinitionError, match=r"unknown keys \['dependsOn'\]; allowed: .* @ \$\.steps\[0\]$"):
        flow_from_spec({"slug": "f", "steps": [{"slug": "a", "dependsOn": []}]})
    with pytest.raises(DefinitionError, match=r"step 'b' depends on unknown step 'x' \(steps: a, b\)"):
        flow_from_spec({"slug": "f", "steps": [{"slug": "a"}, {"slug": "b", "deps": ["x"]}]})


def test_spec_round_trip_and_same_model_as_typed_class() -> None:
    flow = definition_of(Linear)
    again = flow_from_spec(spec_of(flow))
    assert compile_flow(again) == compile_flow(flow)
    assert spec_of(again) == spec_of(flow)


def test_spec_errors_name_the_origin_and_every_problem_with_its_path() -> None:
    with pytest.raises(DefinitionError) as info:
        flow_from_spec(
            {
                "slug": 5,
                "steps": [{"slug": "a", "deps": [1]}, "b"],
                "cron": [{"schedule": "@hourly", "every": 2}, {"name": "x"}, 3],
            },
            origin="flows/tenant.json",
        )
    message = str(info.value)
    assert message.startswith("flows/tenant.json: ")
    for problem in (
        "expected a string, got the number 5 @ $.slug",
        "expected a string, got the number 1 @ $.steps[0].deps[0]",
        "expected an object, got the string 'b' @ $.steps[1]",
        "unknown keys ['every']; allowed: ['catch_up', 'input', 'name', 'schedule', 'timezone'] @ $.cron[0]",
        "required field missing @ $.cron[1].schedule",
        "expected an object, got the number 3 @ $.cron[2]",
    ):
        assert problem in message
    with pytest.raises(DefinitionError, match=r"^spec: expected an object, got an array @ \$$"):
        flow_from_spec([{"slug": "f"}])


def test_spec_model_structures_the_documented_shape() -> None:
    spec = parse_spec(
        {
            "slug": "f",
            "timeout": 30,
            "steps": [{"slug": "a"}, {"slug": "m", "deps": ["a"], "step_type": "map", "start_delay": 2}],
            "cron": ["@hourly", {"schedule": "0 9 * * *", "name": "morning", "input": {"n": 1}, "catch_up": "once"}],
        }
    )
    assert spec == FlowSpec(
        slug="f",
        timeout=30,
        steps=[StepSpec("a"), StepSpec("m", deps=["a"], step_type="map", start_delay=2)],
        cron=["@hourly", CronSpec("0 9 * * *", input={"n": 1}, name="morning", catch_up="once")],
    )


def _flow(**changes: Any) -> FlowDef:
    data: dict[str, Any] = {"slug": "f", "steps": [{"slug": "a"}, {"slug": "b", "deps": ["a"]}]}
    return flow_from_spec({**data, **changes})


def test_flow_differences_is_a_structured_diff_with_pgflow_defaults() -> None:
    assert flow_differences(_flow(), _flow()) == ()
    # an unset flow option is pgflow's default (max_attempts 3, base_delay 5, timeout 60)
    assert flow_differences(_flow(), _flow(max_attempts=3, base_delay=5, timeout=60)) == ()
    assert flow_differences(_flow(), _flow(max_attempts=5, timeout=60)) == (Difference("max_attempts", 3, 5),)
    changed = _flow(
        steps=[{"slug": "a", "timeout": 9}, {"slug": "b", "deps": ["a"], "step_type": "map"}, {"slug": "c"}]
    )
    assert flow_differences(_flow(), changed) == (
        Difference("steps", ("a", "b"), ("a", "b", "c")),
        Difference("steps.a.timeout", None, 9),
        Difference("steps.b.step_type", "single", "map"),
    )
    lines = [d.describe() for d in flow_differences(_flow(base_delay=1), changed)]
    assert lines == [
        "flow base_delay: 1 in code, 5 in the database",
        "steps: a, b in code; a, b, c in the database",
        "step 'a' timeout: None in code, 9 in the database",
        "step 'b' step_type: 'single' in code, 'map' in the database",
    ]


def test_flow_differences_ignore_dependency_order() -> None:
    ours = flow_from_spec({"slug": "f", "steps": [{"slug": "a"}, {"slug": "b"}, {"slug": "c", "deps": ["a", "b"]}]})
    theirs = flow_from_spec({"slug": "f", "steps": [{"slug": "a"}, {"slug": "b"}, {"slug": "c", "deps": ["b", "a"]}]})
    assert flow_differences(ours, theirs) == ()
    other = flow_from_spec({"slug": "f", "steps": [{"slug": "a"}, {"slug": "b"}, {"slug": "c", "deps": ["a"]}]})
    assert flow_differences(ours, other) == (Difference("steps.c.deps", ("a", "b"), ("a",)),)


def test_build_flow_validates_result_mode_and_schedules() -> None:
    steps = [StepDef("a"), StepDef("b")]
    with pytest.raises(DefinitionError, match=r"result_mode 'leaf' needs exactly one step nobody depends on"):
        build_flow("f", steps, origin="here", result_mode="leaf", typed=True)
    with pytest.raises(DefinitionError, match=r"result_mode 'leaf' needs a typed flow"):
        build_flow("f", steps[:1], origin="here", result_mode="leaf")
    with pytest.raises(DefinitionError, match=r"result_mode 'record' needs an attrs output class"):
        build_flow("f", steps, origin="here", result_mode="record", output_type=A, typed=True)
    with pytest.raises(DefinitionError, match=r"here, cron: unknown cron alias"):
        build_flow("f", steps, origin="here", schedules="@sometimes")
    flow = build_flow("f", steps, origin="here", schedules=Schedule("@hourly", input={"n": 1}))
    assert [(s.name, s.input) for s in flow.schedules] == [("f", {"n": 1})]
    assert definition_of(Linear).result_mode == "leaf"
