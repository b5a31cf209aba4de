"""JSON <-> typed values through one private cattrs Converter (never cattrs' global one).

Plain JSON annotations (`dict`, `list`, `str`, `int`, `float`, `bool`, `None`, `Any`) pass through unchanged, and
falsy values (0, false, "", []) keep their value.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import cattrs
from cattrs.preconf.json import make_converter

from ._errors import PgflowError

T = TypeVar("T")

_converter = make_converter(forbid_extra_keys=False, prefer_attrib_converters=True)


class SerializationError(PgflowError):
    """A value could not be converted to or from JSON; the message shows where (`$.path`) and why."""


def _describe(exc: Exception, path: str) -> str:
    if isinstance(exc, (cattrs.BaseValidationError, cattrs.ClassValidationError)):
        return "; ".join(cattrs.transform_error(exc, path=path))
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


def unstructure(value: Any, *, what: str) -> Any:
    """Convert a typed value into plain JSON data; raise SerializationError naming `what` when it cannot be."""
    try:
        data = _converter.unstructure(value)
        to_json(data, what=what)  # proves it is JSON
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"{what}: cannot be turned into JSON: {exc}") from exc
    return data


def to_json(data: Any, *, what: str) -> str:
    """Encode plain data as compact JSON text (NaN and infinities are rejected, as PostgreSQL would)."""
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what}: cannot be turned into JSON: {exc}") from exc


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)
