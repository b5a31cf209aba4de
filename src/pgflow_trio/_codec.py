"""JSON <-> typed values through one private cattrs Converter (never cattrs' global one).

Each way is one pass. Out: `encode` unstructures a typed value once and encodes it once into the JSON text that goes
to the database unchanged. In: JSON text is decoded once (`from_json`) and `structure` converts the data once into
the annotated type.

Plain JSON annotations (`dict`, `list`, `str`, `int`, `float`, `bool`, `None`, `Any`) pass through unchanged, and
falsy values (0, false, "", []) keep their value. Structuring is strict about JSON kinds at every depth: an attrs
class, a dataclass, a TypedDict or a dict needs a JSON object, a list/tuple/set/NamedTuple a JSON array (a fixed-size
tuple or NamedTuple one of its length), `str` a string, `bool` a boolean, `int` an integer (not a float or a boolean),
`float` a number, `None` null, a Literal or an Enum one of its values of the same JSON kind (`Literal[1]` refuses
`true`), and the keys of a `dict[int, X]` integers written as JSON writes them ("1", never "01"); anything else is an
error naming the path and the expected type.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import json
import math
import re
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import is_namedtuple, list_structure_factory, mapping_structure_factory
from cattrs.preconf.json import make_converter
from cattrs.v import format_exception

from pgflow_trio._exceptions import SerializationError

T = TypeVar("T")
Hook = Callable[[Any, Any], Any]

_converter = make_converter(forbid_extra_keys=False, prefer_attrib_converters=True)


class _Refused(TypeError):
    """A JSON value the annotation does not accept; its message is shown as is, followed by the path."""


class _WrongKind(_Refused):
    """A JSON value of the wrong kind (an array where an object is expected, a string where an int is...)."""

    def __init__(self, expected: Any, wanted_kind: str, value: Any) -> None:
        super().__init__(f"expected {_name(expected)} (a JSON {wanted_kind}), got a JSON {_kind(value)}")


def _name(annotation: Any) -> str:
    """The annotation as a reader writes it, without module paths: list[Item], not list[app.models.Item]."""
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not get_args(annotation):
        name = annotation.__qualname__
    else:
        name = repr(annotation).removeprefix("typing.")
    return re.sub(r"\b(?:[a-zA-Z_]\w*\.)+", "", name)


def _shown(value: Any) -> str:
    """A JSON value in a message: short JSON text."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number (not an integer)"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return f"value of Python type {type(value).__qualname__}"


def _structure_int(value: Any, cl: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _WrongKind(cl, "integer", value)
    return value


def _structure_float(value: Any, cl: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _WrongKind(cl, "number", value)
    return float(value)


def _structure_str(value: Any, cl: Any) -> str:
    if not isinstance(value, str):
        raise _WrongKind(cl, "string", value)
    return value


def _structure_bool(value: Any, cl: Any) -> bool:
    if not isinstance(value, bool):
        raise _WrongKind(cl, "boolean", value)
    return value


def _structure_none(value: Any, cl: Any) -> None:
    if value is not None:
        raise _WrongKind(cl, "null", value)


def _same_json_value(value: Any, allowed: Any) -> bool:
    """`value == allowed` of the same JSON kind: `true` is not `1`, `1.0` is not `1`."""
    return _kind(value) == _kind(allowed) and value == allowed


def _is_literal(cl: Any) -> bool:
    return get_origin(cl) is Literal


def _literal_hook(cl: Any) -> Hook:
    choices = get_args(cl)

    def structure_literal(value: Any, _: Any) -> Any:
        for choice in choices:
            if _same_json_value(value, choice.value if isinstance(choice, enum.Enum) else choice):
                return choice
        allowed = ", ".join(_shown(c.value if isinstance(c, enum.Enum) else c) for c in choices)
        raise _Refused(f"expected one of {allowed} ({_name(cl)}), got a JSON {_kind(value)} {_shown(value)}")

    return structure_literal


def _is_enum(cl: Any) -> bool:
    return isinstance(cl, type) and issubclass(cl, enum.Enum)


def _structure_enum(value: Any, cl: Any) -> Any:
    for member in cl:
        if _same_json_value(value, member.value):
            return member
    allowed = ", ".join(_shown(m.value) for m in cl)
    raise _Refused(f"expected one of {allowed} ({_name(cl)}), got a JSON {_kind(value)} {_shown(value)}")


def _or_enum(hook: Hook) -> Hook:
    """`hook`, registered for str or int, also gets their subclasses: an Enum mixing one in is structured as one."""

    def structure_scalar(value: Any, cl: Any) -> Any:
        return _structure_enum(value, cl) if _is_enum(cl) else hook(value, cl)

    return structure_scalar


def _checked(hook: Hook, python_kind: type, json_kind: str) -> Hook:
    """`hook`, after checking that the value is of the JSON kind the annotation needs."""

    def structure_checked(value: Any, cl: Any) -> Any:
        if not isinstance(value, python_kind):
            raise _WrongKind(cl, json_kind, value)
        return hook(value, cl)

    return structure_checked


_ARRAYS = {
    list: list,
    tuple: tuple,
    set: set,
    frozenset: frozenset,
    collections.abc.Sequence: list,
    collections.abc.MutableSequence: list,
    collections.abc.Set: frozenset,
    collections.abc.MutableSet: set,
}
_OBJECTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _is_array(cl: Any) -> bool:
    return (get_origin(cl) or cl) in _ARRAYS


def _sized(hook: Hook, expected: Any, size: int) -> Hook:
    """`hook` for a fixed-size array (a tuple[A, B] or a NamedTuple), after checking the kind and the length."""

    def structure_sized(value: Any, cl: Any) -> Any:
        items = "item" if size == 1 else "items"
        if not isinstance(value, (list, tuple)):
            raise _Refused(f"expected {_name(expected)} (a JSON array of {size} {items}), got a JSON {_kind(value)}")
        if len(value) != size:
            raise _Refused(f"expected {_name(expected)} (a JSON array of {size} {items}), got {len(value)} items")
        return hook(value, cl)

    return structure_sized


def _array_hook(cl: Any) -> Hook:
    origin = get_origin(cl) or cl
    args = get_args(cl)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return _sized(_converter.gen_structure_hetero_tuple(cl), cl, len(args))
    as_list = list_structure_factory(list[args[0]] if args else list, _converter)  # type: ignore[valid-type]
    container = _ARRAYS[origin]

    def structure_array(value: Any, _: Any) -> Any:
        items = as_list(value, cl)
        return items if container is list else container(items)

    return _checked(structure_array, list, "array")


def _is_object(cl: Any) -> bool:
    return (get_origin(cl) or cl) in _OBJECTS


def _object_hook(cl: Any) -> Hook:
    # Not `_converter.gen_structure_mapping`: it registers its bare hook for `cl`, so later calls would skip ours.
    hook: Hook = mapping_structure_factory(cl, _converter, dict)
    if get_args(cl)[:1] == (int,):  # JSON object keys are strings: {"1": ...} is how dict[int, X] round-trips
        inner = hook

        def hook(value: Any, cl: Any) -> Any:
            return inner({_int_key(key, cl): item for key, item in value.items()}, cl)

    return _checked(hook, dict, "object")


def _int_key(key: object, cl: Any) -> object:
    """An object key of a dict[int, X] as its integer; only the text JSON writes for it ("1", "-2") is accepted,
    so that two keys ("01" and "1") can never become one. Other keys are left to the int hook."""
    if not isinstance(key, str):
        return key
    if not re.fullmatch(r"-?[0-9]+", key):
        raise _Refused(f"key {key!r} of {_name(cl)} is not an integer")
    number = int(key)
    if str(number) != key:
        raise _Refused(f"key {key!r} of {_name(cl)} is written {str(number)!r} (one integer has one key)")
    return number


def _is_record(cl: Any) -> bool:
    """An attrs class or a dataclass (also a generic one: Box[int])."""
    origin = get_origin(cl) or cl
    return attrs.has(cl) or (isinstance(origin, type) and dataclasses.is_dataclass(origin))


def _record_hook(cl: Any) -> Hook:
    return _checked(_converter.gen_structure_attrs_fromdict(cl), dict, "object")


def _is_typeddict(cl: Any) -> bool:
    return typing.is_typeddict(get_origin(cl) or cl)


def _typeddict_hook(cl: Any) -> Hook:
    return _checked(_converter.gen_structure_typeddict(cl), dict, "object")


def _namedtuple_hook(cl: Any) -> Hook:
    """A NamedTuple from a JSON array of all its fields (as it is unstructured), each by its resolved type hint."""
    as_tuple = tuple[tuple(typing.get_type_hints(cl).values())]  # type: ignore[misc,valid-type]
    items = _converter.get_structure_hook(as_tuple)

    def structure_namedtuple(value: Any, _: Any) -> Any:
        return cl(*items(value, as_tuple))

    return _sized(structure_namedtuple, cl, len(cl._fields))


_converter.register_structure_hook(int, _or_enum(_structure_int))
_converter.register_structure_hook(float, _or_enum(_structure_float))
_converter.register_structure_hook(str, _or_enum(_structure_str))
_converter.register_structure_hook(bool, _structure_bool)
_converter.register_structure_hook_func(lambda cl: cl is None or cl is type(None), _structure_none)
_converter.register_structure_hook_factory(_is_literal, _literal_hook)
_converter.register_structure_hook_func(_is_enum, _structure_enum)
_converter.register_structure_hook_factory(_is_array, _array_hook)
_converter.register_structure_hook_factory(is_namedtuple, _namedtuple_hook)
_converter.register_structure_hook_factory(_is_object, _object_hook)
_converter.register_structure_hook_factory(_is_typeddict, _typeddict_hook)
_converter.register_structure_hook_factory(_is_record, _record_hook)


def _format(exc: BaseException, cl: Any) -> str:
    if isinstance(exc, _Refused):
        return str(exc)
    return format_exception(exc, cl)


def _describe(exc: Exception, path: str) -> str:
    if isinstance(exc, (cattrs.BaseValidationError, cattrs.ClassValidationError)):
        return "; ".join(cattrs.transform_error(exc, path=path, format_exception=_format))
    return f"{exc} @ {path}"


def structure(value: Any, annotation: Any, *, what: str, path: str = "$") -> Any:
    """Convert decoded JSON `value` into `annotation`; raise SerializationError naming `what` and the path."""
    if annotation is Any or annotation is object:
        return value
    if annotation is None or annotation is type(None):
        if value is not None:
            raise SerializationError(f"{what}: expected null, got a JSON {_kind(value)} @ {path}")
        return None
    try:
        return _converter.structure(value, annotation)
    except Exception as exc:
        raise SerializationError(f"{what}: {_describe(exc, path)}") from exc


def encode(value: Any, *, what: str) -> str:
    """A typed value as compact JSON text, in one pass: unstructured once, encoded once. SerializationError naming
    `what` (and the path of the culprit) when it cannot be JSON."""
    return to_json(unstructure(value, what=what), what=what)


def unstructure(value: Any, *, what: str) -> Any:
    """A typed value as plain data (attrs classes become dicts...). Not yet proven to be JSON: `to_json` does that
    while encoding, so nothing is encoded twice."""
    try:
        return _converter.unstructure(value)
    except Exception as exc:
        raise SerializationError(f"{what}: cannot be turned into JSON: {exc}") from exc


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def to_json(data: Any, *, what: str) -> str:
    """Encode plain data as compact JSON text (NaN and infinities are rejected, as PostgreSQL would)."""
    try:
        return _ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what}: cannot be turned into JSON: {exc} @ {_culprit(data, '$', ())}") from exc


def _culprit(data: Any, path: str, parents: tuple[int, ...]) -> str:
    """The path of the first value in `data` that is not JSON (only walked once encoding has failed)."""
    found = _find_culprit(data, path, parents)
    return path if found is None else found


def _find_culprit(data: Any, path: str, parents: tuple[int, ...]) -> str | None:
    if data is None or isinstance(data, (str, int)):
        return None
    if isinstance(data, float):
        return None if math.isfinite(data) else path
    if not isinstance(data, (list, tuple, dict)):
        return path
    if id(data) in parents:
        return f"{path} (a circular reference)"
    parents = (*parents, id(data))
    if isinstance(data, dict):
        for key, item in data.items():
            if key is not None and not isinstance(key, (str, int, float)):
                return f"{path} (key {key!r})"
            step = f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]"
            if (found := _find_culprit(item, path + step, parents)) is not None:
                return found
        return None
    for index, item in enumerate(data):
        if (found := _find_culprit(item, f"{path}[{index}]", parents)) is not None:
            return found
    return None


def from_json(text: str | None) -> Any:
    """Decode JSON text once (None stays None: a SQL NULL)."""
    return None if text is None else json.loads(text)


class NotJSON(ValueError):
    """Text that Python's json module would read but that is not JSON (NaN, Infinity, -Infinity)."""


def _no_constant(name: str) -> Any:
    raise NotJSON(f"{name} is not JSON (JSON and PostgreSQL have no NaN or infinities)")


def parse_json(text: str) -> Any:
    """Decode JSON text a user gave, refusing NaN, Infinity and -Infinity, which Python's json accepts but JSON
    and PostgreSQL do not. Raises ValueError (json.JSONDecodeError or NotJSON) saying what is wrong."""
    return json.loads(text, parse_constant=_no_constant)
