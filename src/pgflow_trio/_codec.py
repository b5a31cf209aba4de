"""JSON <-> typed values through one private cattrs Converter (never cattrs' global one).

Each way is one pass. Out: `encode` unstructures a typed value once and encodes it once into the JSON text that goes
to the database unchanged. In: JSON text is decoded once (`from_json`) and `structure` converts the data once into
the annotated type.

Plain JSON annotations (`dict`, `list`, `str`, `int`, `float`, `bool`, `None`, `Any`) pass through unchanged, and
falsy values (0, false, "", []) keep their value. Structuring is strict about JSON kinds at every depth: an attrs
class or a dict needs a JSON object, a list/tuple/set a JSON array, `str` a string, `bool` a boolean, `int` an integer
(not a float or a boolean), `float` a number; anything else is an error naming the path and the expected type.
"""

from __future__ import annotations

import collections.abc
import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.preconf.json import make_converter
from cattrs.v import format_exception

from pgflow_trio._exceptions import SerializationError

T = TypeVar("T")
Hook = Callable[[Any, Any], Any]

_converter = make_converter(forbid_extra_keys=False, prefer_attrib_converters=True)


class _WrongKind(TypeError):
    """A JSON value of the wrong kind (an array where an object is expected, a string where an int is...)."""

    def __init__(self, expected: Any, wanted_kind: str, value: Any) -> None:
        name = expected.__qualname__ if isinstance(expected, type) and not get_args(expected) else repr(expected)
        name = re.sub(r"\b(?:[a-zA-Z_]\w*\.)+", "", name)  # no module paths: list[Item], not list[app.models.Item]
        super().__init__(f"expected {name} (a JSON {wanted_kind}), got a JSON {_kind(value)}")


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


def _array_hook(cl: Any) -> Hook:
    origin = get_origin(cl) or cl
    args = get_args(cl)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return _checked(_converter.gen_structure_hetero_tuple(cl), list, "array")
    as_list = list_structure_factory(list[args[0]] if args else list, _converter)  # type: ignore[valid-type]
    container = _ARRAYS[origin]

    def structure_array(value: Any, _: Any) -> Any:
        items = as_list(value, cl)
        return items if container is list else container(items)

    return _checked(structure_array, list, "array")


def _is_object(cl: Any) -> bool:
    return (get_origin(cl) or cl) in _OBJECTS


def _object_hook(cl: Any) -> Hook:
    hook: Hook = _converter.gen_structure_mapping(cl)
    if get_args(cl)[:1] == (int,):  # JSON object keys are strings: {"1": ...} is how dict[int, X] round-trips
        inner = hook

        def hook(value: Any, cl: Any) -> Any:
            return inner({_int_key(key): item for key, item in value.items()}, cl)

    return _checked(hook, dict, "object")


def _int_key(key: Any) -> Any:
    return int(key) if isinstance(key, str) and re.fullmatch(r"-?[0-9]+", key) else key


def _attrs_hook(cl: Any) -> Hook:
    return _checked(_converter.gen_structure_attrs_fromdict(cl), dict, "object")


_converter.register_structure_hook(int, _structure_int)
_converter.register_structure_hook(float, _structure_float)
_converter.register_structure_hook(str, _structure_str)
_converter.register_structure_hook(bool, _structure_bool)
_converter.register_structure_hook_factory(_is_array, _array_hook)
_converter.register_structure_hook_factory(_is_object, _object_hook)
_converter.register_structure_hook_factory(attrs.has, _attrs_hook)


def _format(exc: BaseException, cl: Any) -> str:
    if isinstance(exc, _WrongKind):
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
            raise SerializationError(f"{what}: expected null, got {type(value).__name__} @ {path}")
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
