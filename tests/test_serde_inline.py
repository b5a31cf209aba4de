"""Serialization through the private converter, and flows executed in-process with pgflow's exact task inputs."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgflow_trio import Context, Flow, Job, SerializationError, definition_of, map_step, run_inline, step
from pgflow_trio._execute import build_arguments, encode_output
from pgflow_trio._serde import from_json, structure, to_json, unstructure


@attrs.frozen
class Charge:
    amount: int
    currency: str = "EUR"


@attrs.frozen
class Order:
    order_id: int
    charge: Charge


@attrs.frozen
class Total:
    cents: int


class Pay(Flow[Order, Total]):
    @step
    async def bill(self, order: Order, ctx: Context) -> Total:
        assert ctx.step_slug == "bill" and ctx.attempt == 1
        return Total(order.charge.amount)


def _ctx(step_slug: str = "bill", index: int = 0) -> Context:
    return Context(uuid.uuid4(), "pay", step_slug, index, 1, None, uuid.uuid4())


def test_bad_input_error_shows_the_path() -> None:
    flow = definition_of(Pay)
    with pytest.raises(SerializationError, match=r"pay\.bill: input: .*\$\.charge\.amount"):
        build_arguments(flow, flow.step("bill"), {"run": {"order_id": 1, "charge": {"amount": "lots"}}}, _ctx())
    with pytest.raises(SerializationError, match=r"required field missing @ \$\.charge"):
        build_arguments(flow, flow.step("bill"), {"run": {"order_id": 1}}, _ctx())


def test_missing_task_input_key_is_an_error() -> None:
    flow = definition_of(Pay)
    with pytest.raises(SerializationError, match=r"task input has no 'run'"):
        build_arguments(flow, flow.step("bill"), {"other": 1}, _ctx())


async def test_typed_flow_runs_inline() -> None:
    assert await run_inline(Pay, Order(1, Charge(250))) == Total(250)


class Falsy(Flow[dict[str, Any], dict[str, Any]]):
    @step
    async def zero(self) -> int:
        return 0

    @step
    async def false(self) -> bool:
        return False

    @step
    async def empty(self) -> str:
        return ""

    @step
    async def nothing(self) -> list[int]:
        return []

    @step
    async def none(self) -> None:
        return None


async def test_falsy_outputs_keep_their_value() -> None:
    out = await run_inline(Falsy, {})
    assert out == {"zero": 0, "false": False, "empty": "", "nothing": [], "none": None}
    assert [type(v) for v in out.values()] == [int, bool, str, list, type(None)]


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_plain_json_passes_through_unchanged(value: Any) -> None:
    for annotation in (Any, object):
        assert structure(value, annotation, what="x") == value
    assert from_json(to_json(unstructure(value, what="x"), what="x")) == value


class Unserializable(Flow[int, Any]):
    @step
    async def weird(self, n: int) -> Any:
        return object()


class WrongType(Flow[int, Total]):
    @step
    async def claims_total(self, n: int) -> Total:
        return "not a total"  # type: ignore[return-value]


async def test_output_that_cannot_become_json_names_the_step() -> None:
    with pytest.raises(SerializationError, match=r"output of step unserializable\.weird: cannot be turned into JSON"):
        await run_inline(Unserializable, 1)


async def test_output_of_the_wrong_type_names_the_step() -> None:
    with pytest.raises(SerializationError, match=r"output of step wrong_type\.claims_total: declared Total, got str"):
        await run_inline(WrongType, 1)


def test_nan_is_not_json() -> None:
    flow = definition_of(Unserializable)
    with pytest.raises(SerializationError, match="cannot be turned into JSON"):
        encode_output(flow, flow.step("weird"), float("nan"))


class WordLengths(Flow[list[str], int]):
    @map_step
    async def length(self, word: str, ctx: Context) -> int:
        return len(word) * 10 + ctx.task_index

    @map_step
    async def halve(self, n: int) -> float:
        return n / 2

    @step
    async def total(self, halve: list[float], words: list[str]) -> int:
        return int(sum(halve)) + len(words)


async def test_map_steps_fan_out_and_in_inline() -> None:
    assert await run_inline(WordLengths, ["ab", "c"]) == int((20 + 11) / 2) + 2
    assert await run_inline(WordLengths, []) == 0


async def test_root_map_input_must_be_a_list() -> None:
    with pytest.raises(SerializationError, match=r"maps over its input, which must be a list"):
        await run_inline(WordLengths, "abc")  # type: ignore[arg-type]


class Shout(Job[str, str], queue="shout"):
    async def perform(self, text: str, ctx: Context) -> str:
        return text.upper()


async def test_job_runs_inline() -> None:
    assert await run_inline(Shout, "hi") == "HI"


@attrs.frozen
class Services:
    prefix: str


@attrs.frozen
class Greeter(Flow[str, str]):
    """A flow that is an attrs class holding a service: workers call its steps on an instance."""

    services: Services

    @step
    async def greet(self, name: str) -> str:
        return f"{self.services.prefix} {name}"


async def test_flow_instances_carry_their_services() -> None:
    assert await run_inline(Greeter(Services("hello")), "ada") == "hello ada"
    assert definition_of(Greeter).slug == "greeter"


async def test_a_flow_class_that_needs_arguments_says_pass_an_instance() -> None:
    from pgflow_trio import DefinitionError

    with pytest.raises(DefinitionError, match="pass an instance instead"):
        await run_inline(Greeter, "ada")
