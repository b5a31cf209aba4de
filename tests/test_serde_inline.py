"""Serialization through the private converter, and flows executed in-process with pgflow's exact task inputs."""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import uuid
from typing import Any, Generic, Literal, NamedTuple, TypedDict, TypeVar

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pgflow_trio import (
    Context,
    Flow,
    Job,
    Schedule,
    SerializationError,
    definition_of,
    map_step,
    needs_all,
    run_inline,
    step,
)
from pgflow_trio._codec import encode, from_json, structure, to_json, unstructure
from pgflow_trio._definitions._values import encode_output
from pgflow_trio._runtime._execute import build_arguments, call_handler


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


class SquaresByName(Flow[list[int], int]):
    @map_step
    async def sq(self, x: int) -> int:
        return x * x

    @step
    async def total(self, sq: list[int]) -> int:
        return sum(sq)


class SquaresPinned(Flow[list[int], int]):
    @map_step
    async def sq(self, x: int) -> int:
        return x * x

    @step
    async def total(self, squares: list[int] = needs_all(sq)) -> int:
        return sum(squares)


@pytest.mark.parametrize("flow", [SquaresByName, SquaresPinned])
async def test_a_map_steps_results_reach_the_step_that_names_or_pins_it(flow: type[Flow[list[int], int]]) -> None:
    assert await run_inline(flow, [1, 2, 3]) == 14


@attrs.frozen
class Defaults:
    n: int = 0


@dataclasses.dataclass
class DataDefaults:
    n: int = 0


T = TypeVar("T")


@dataclasses.dataclass
class GenericData(Generic[T]):
    n: T | None = None


class Typed(TypedDict, total=False):
    n: int


@pytest.mark.parametrize("value", ["str", [1], 5, None, True, 1.5])
@pytest.mark.parametrize(
    ("annotation", "name"),
    [
        (Defaults, "Defaults"),
        (DataDefaults, "DataDefaults"),
        (GenericData[int], r"GenericData\[int\]"),
        (Typed, "Typed"),
    ],
)
def test_an_object_input_needs_a_json_object_even_when_every_field_has_a_default(
    value: Any, annotation: Any, name: str
) -> None:
    with pytest.raises(SerializationError, match=rf"x: expected {name} \(a JSON object\), got a JSON \w+.* @ \$$"):
        structure(value, annotation, what="x")
    assert structure({}, annotation, what="x") == annotation()
    assert structure({"n": 1}, annotation, what="x") == annotation(n=1)


@attrs.frozen
class Line:
    sku: str
    qty: int
    price: float = 0.0


@attrs.frozen
class Basket:
    items: list[Line]
    extra: dict[str, Line] = attrs.Factory(dict)
    tags: tuple[str, ...] = ()
    by_id: dict[int, str] = attrs.Factory(dict)
    nested: Defaults = Defaults()


def _basket(**changes: Any) -> dict[str, Any]:
    lines = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}, {"sku": "c", "qty": 3}]
    return {"items": lines, **changes}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _basket(items=[{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}, {"sku": "c", "qty": "3"}]),
            r"expected int \(a JSON integer\), got a JSON string @ \$\.items\[2\]\.qty",
        ),
        (_basket(items=[{"sku": "a", "qty": 1.0}]), r"expected int .*got a JSON number .*@ \$\.items\[0\]\.qty"),
        (_basket(items=[{"sku": "a", "qty": False}]), r"expected int .*got a JSON boolean @ \$\.items\[0\]\.qty"),
        (_basket(items=[{"sku": "a", "qty": 1, "price": True}]), r"expected float .*boolean @ \$\.items\[0\]\.price"),
        (_basket(items=[{"sku": 7, "qty": 1}]), r"expected str \(a JSON string\), got a JSON integer @ \$\.items\[0\]"),
        (_basket(items="abc"), r"expected list\[Line\] \(a JSON array\), got a JSON string @ \$\.items$"),
        (_basket(items={"sku": "a"}), r"expected list\[Line\] \(a JSON array\), got a JSON object @ \$\.items$"),
        (_basket(items=["x"]), r"expected Line \(a JSON object\), got a JSON string @ \$\.items\[0\]$"),
        (_basket(extra={"k": [1]}), r"expected Line \(a JSON object\), got a JSON array @ \$\.extra\['k'\]$"),
        (_basket(extra=[1]), r"expected dict\[str, Line\] \(a JSON object\), got a JSON array @ \$\.extra$"),
        (_basket(tags="ab"), r"expected tuple\[str, \.\.\.\] \(a JSON array\), got a JSON string @ \$\.tags$"),
        (_basket(nested="x"), r"expected Defaults \(a JSON object\), got a JSON string @ \$\.nested$"),
    ],
)
def test_wrong_json_kinds_are_refused_at_every_depth_with_path_and_type(data: Any, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        structure(data, Basket, what="x")


class Colour(enum.Enum):
    RED = 1


class Size(enum.StrEnum):
    SMALL = "s"


class Point(NamedTuple):
    x: int
    y: int = 0


@dataclasses.dataclass
class Shapes:
    points: list[Point] = dataclasses.field(default_factory=list)
    colour: Colour = Colour.RED
    size: Size = Size.SMALL
    one: Literal[1] = 1
    flag: Literal[True] = True
    nothing: None = None
    pair: tuple[int, str] = (0, "")
    by_id: dict[int, str] = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"points": [[1, 2], "x"]},
            r"expected Point \(a JSON array of 2 items\), got a JSON string @ \$\.points\[1\]$",
        ),
        ({"points": [[1, 2, 3]]}, r"expected Point \(a JSON array of 2 items\), got 3 items @ \$\.points\[0\]$"),
        ({"points": [[1, "2"]]}, r"expected int \(a JSON integer\), got a JSON string @ \$\.points\[0\]\[1\]$"),
        ({"colour": True}, r"expected one of 1 \(Colour\), got a JSON boolean true @ \$\.colour$"),
        ({"size": "xl"}, r"expected one of \"s\" \(Size\), got a JSON string \"xl\" @ \$\.size$"),
        ({"one": True}, r"expected one of 1 \(Literal\[1\]\), got a JSON boolean true @ \$\.one$"),
        ({"one": 1.0}, r"expected one of 1 \(Literal\[1\]\), got a JSON number .* @ \$\.one$"),
        ({"flag": 1}, r"expected one of true \(Literal\[True\]\), got a JSON integer 1 @ \$\.flag$"),
        ({"nothing": 0}, r"expected None \(a JSON null\), got a JSON integer @ \$\.nothing$"),
        ({"pair": [1]}, r"expected tuple\[int, str\] \(a JSON array of 2 items\), got 1 items @ \$\.pair$"),
        ({"by_id": {"01": "a", "1": "b"}}, r"key '01' of dict\[int, str\] is written '1' .*@ \$\.by_id$"),
        ({"by_id": {"one": "a"}}, r"key 'one' of dict\[int, str\] is not an integer @ \$\.by_id$"),
        ("oops", r"expected Shapes \(a JSON object\), got a JSON string @ \$$"),
    ],
)
def test_dataclasses_enums_literals_and_named_tuples_are_strict_too(data: Any, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        structure(data, Shapes, what="x")


def test_dataclasses_enums_literals_and_named_tuples_structure() -> None:
    data = {
        "points": [[1, 2]],
        "colour": 1,
        "size": "s",
        "one": 1,
        "flag": True,
        "pair": [3, "c"],
        "by_id": {"-2": "a"},
    }
    shapes = structure(data, Shapes, what="x")
    assert shapes == Shapes([Point(1, 2)], Colour.RED, Size.SMALL, 1, True, None, (3, "c"), {-2: "a"})
    assert structure(unstructure(shapes, what="x"), Shapes, what="x") == shapes


def test_none_names_json_kinds() -> None:
    with pytest.raises(SerializationError, match=r"^x: expected null, got a JSON integer @ \$$"):
        structure(5, None, what="x")
    assert structure(None, None, what="x") is None


def test_right_json_kinds_structure() -> None:
    data = _basket(extra={"k": {"sku": "z", "qty": 0}}, tags=["a"], by_id={"1": "one"})
    data["items"][0]["price"] = 2
    basket = structure(data, Basket, what="x")
    assert basket.items[0] == Line("a", 1, 2.0) and isinstance(basket.items[0].price, float)
    assert basket.extra == {"k": Line("z", 0)}
    assert basket.tags == ("a",)
    assert basket.by_id == {1: "one"}
    assert structure(unstructure(basket, what="x"), Basket, what="x") == basket


async def test_a_worker_style_task_with_a_non_object_input_fails_before_the_handler() -> None:
    class Takes(Flow[Defaults, int]):
        @step
        async def only(self, inp: Defaults) -> int:
            raise AssertionError("must not run")

    flow = definition_of(Takes)
    with pytest.raises(
        SerializationError, match=r"takes\.only: input: expected Defaults \(a JSON object\), got a JSON"
    ):
        build_arguments(flow, flow.step("only"), {"run": "str"}, _ctx("only"))


class TypedContext(Flow[Order, int]):
    @step
    async def typed(self, order: Order, ctx: Context[Order]) -> int:
        assert ctx.flow_input == order and isinstance(ctx.flow_input, Order)
        return ctx.flow_input.charge.amount

    @step
    async def bare(self, typed: int, ctx: Context) -> int:
        assert isinstance(ctx.flow_input, Order)
        return typed + int(ctx.flow_input.order_id)


async def test_ctx_flow_input_is_the_structured_flow_input() -> None:
    assert await run_inline(TypedContext, Order(7, Charge(100))) == 107
    flow = definition_of(TypedContext)
    raw = {"order_id": 7, "charge": {"amount": 100}}
    ctx = Context(uuid.uuid4(), "typed_context", "typed", 0, 1, raw, uuid.uuid4())
    kwargs = build_arguments(flow, flow.step("typed"), {"run": raw}, ctx)
    assert kwargs["ctx"].flow_input == Order(7, Charge(100))
    assert kwargs["ctx"].run_id == ctx.run_id and ctx.flow_input is raw


def test_a_bad_flow_input_in_the_context_names_the_path() -> None:
    flow = definition_of(TypedContext)
    bad = {"order_id": 7, "charge": {"amount": "lots"}}
    ctx = Context(uuid.uuid4(), "typed_context", "bare", 0, 1, bad, uuid.uuid4())
    with pytest.raises(
        SerializationError, match=r"typed_context\.bare: flow input \(ctx\.flow_input\): .*\$\.charge\.amount"
    ):
        build_arguments(flow, flow.step("bare"), {"run": bad, "typed": 1}, ctx)


async def test_a_job_gets_its_typed_input_in_the_context_too() -> None:
    class Echo(Job[Charge, str], queue="echo"):
        async def perform(self, charge: Charge, ctx: Context[Charge]) -> str:
            return f"{ctx.flow_input.amount} {ctx.flow_input.currency}"

    assert await run_inline(Echo, Charge(5)) == "5 EUR"


@pytest.mark.parametrize(
    ("annotation", "data", "message"),
    [
        (dict[int, str], {"01": "a"}, r"key '01' of dict\[int, str\] is written '1'"),
        (dict[str, int], [1], r"expected dict\[str, int\] \(a JSON object\), got a JSON array"),
    ],
)
def test_a_mapping_stays_strict_on_every_call(annotation: Any, data: Any, message: str) -> None:
    for _ in range(3):  # the converter caches hooks: the second call must not get a laxer one
        with pytest.raises(SerializationError, match=message):
            structure(data, annotation, what="x")


# ---- one pass each way --------------------------------------------------------------------------------------


@attrs.frozen
class Receipt:
    order_id: int
    lines: list[Line]
    note: str


class Receipts(Flow[Order, Receipt]):
    @step
    async def receipt(self, order: Order, ctx: Context) -> Receipt:
        lines = [Line(f"sku-{i}", i, 1.5 * i) for i in range(20)]
        return Receipt(order.order_id, lines, note="made by the handler")


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every JSON text json encodes from now on (json.dumps and encoder instances alike go through encode)."""
    texts: list[str] = []
    original = json.JSONEncoder.encode

    def counting(self: json.JSONEncoder, o: Any) -> str:
        text = original(self, o)
        texts.append(text)
        return text

    monkeypatch.setattr(json.JSONEncoder, "encode", counting)
    return texts


async def test_a_step_output_becomes_json_text_with_one_encode(encoded: list[str]) -> None:
    flow = definition_of(Receipts)
    task_input = {"run": {"order_id": 3, "charge": {"amount": 5}}}
    text = await call_handler(flow, flow.step("receipt"), Receipts(), task_input, _ctx("receipt"))
    assert isinstance(text, str) and json.loads(text)["lines"][19] == {"sku": "sku-19", "qty": 19, "price": 28.5}
    assert encoded == [text]


async def test_an_inline_run_encodes_each_value_once(encoded: list[str]) -> None:
    result = await run_inline(Receipts, Order(3, Charge(5)))
    assert result.order_id == 3 and result.lines[1] == Line("sku-1", 1, 1.5)
    assert len(encoded) == 2  # the flow input and the one step's output; nothing is re-encoded to copy it


async def test_the_worker_encodes_an_output_once_and_sends_that_text(dsn: str, encoded: list[str]) -> None:
    from pgflow_trio import serve
    from pgflow_trio._store import open_database

    from .helpers import FAST, start_run, wait_run

    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db, trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve, Receipts, dsn=dsn, options=FAST))
            run_id = await start_run(db, "receipts", {"order_id": 4, "charge": {"amount": 1}})
            status, output = await wait_run(db, run_id)
            nursery.cancel_scope.cancel()
    assert status == "completed" and output["receipt"]["note"] == "made by the handler"
    outputs = [text for text in encoded if "made by the handler" in text]
    assert len(outputs) == 1 and json.loads(outputs[0]) == output["receipt"]


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


@attrs.frozen
class Measured:
    items: list[Line]
    extra: dict[str, Any] = attrs.Factory(dict)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Measured([Line("a", 1), Line("b", 2, float("nan"))]), r"not JSON compliant @ \$\.items\[1\]\.price$"),
        (Measured([], {"deep": [1, {"x y": float("inf")}]}), r"@ \$\.extra\.deep\[1\]\['x y'\]$"),
        (Measured([], {"when": object()}), r"Object of type object is not JSON serializable @ \$\.extra\.when$"),
        (Measured([], {"k": {Opaque(): 3}}), r"keys must be str.* @ \$\.extra\.k \(key Opaque\(\)\)$"),
    ],
)
def test_a_value_that_is_not_json_is_named_by_its_path(value: Measured, message: str) -> None:
    with pytest.raises(SerializationError, match=r"^x: cannot be turned into JSON: .*" + message):
        encode(value, what="x")


def test_a_circular_value_is_named_not_walked_forever() -> None:
    loop: list[Any] = [1]
    loop.append({"back": loop})
    with pytest.raises(SerializationError, match=r"^x: cannot be turned into JSON: maximum recursion depth"):
        encode(loop, what="x")  # the converter gives up first
    with pytest.raises(
        SerializationError, match=r"Circular reference detected @ \$\[1\]\.back \(a circular reference\)$"
    ):
        to_json(loop, what="x")


class Nightly(Flow[dict[int, tuple[str, ...]], int], cron=Schedule("0 3 * * *", input={7: ("a", "b")})):
    @step
    async def count(self, data: dict[int, tuple[str, ...]]) -> int:
        return len(data)


def test_a_schedule_keeps_its_input_as_the_database_holds_it() -> None:
    (schedule,) = definition_of(Nightly).schedules
    assert schedule.input == {"7": ["a", "b"]}


async def test_syncing_a_schedule_twice_changes_nothing_the_second_time(dsn: str) -> None:
    from pgflow_trio._runtime._cron import sync_schedules
    from pgflow_trio._store import open_database
    from pgflow_trio._store._registry import ensure_flow

    flow = definition_of(Nightly)
    with trio.fail_after(30):
        async with open_database(dsn, max_size=2) as db:
            await ensure_flow(db, flow)
            first = await sync_schedules(db, [flow], backend="builtin")
            second = await sync_schedules(db, [flow], backend="builtin")
    assert first.created == ("nightly",)
    assert (second.updated, second.unchanged) == ((), ("nightly",))


def test_a_flow_input_taken_with_a_typed_context_is_structured_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgflow_trio._runtime import _execute

    calls: list[Any] = []

    def counting(value: Any, annotation: Any, *, what: str, path: str = "$") -> Any:
        calls.append(annotation)
        return structure(value, annotation, what=what, path=path)

    monkeypatch.setattr(_execute, "structure", counting)
    flow = definition_of(TypedContext)
    raw = {"order_id": 7, "charge": {"amount": 100}}
    ctx = Context(uuid.uuid4(), "typed_context", "typed", 0, 1, raw, uuid.uuid4())
    kwargs = build_arguments(flow, flow.step("typed"), {"run": raw}, ctx)
    assert kwargs["ctx"].flow_input is kwargs["order"] and calls == [Order]
