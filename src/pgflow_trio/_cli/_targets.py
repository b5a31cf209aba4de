"""Resolve a TARGET given on the command line: `package.module:Attr`, `path/to/file.py:Attr` or `spec.json`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from pgflow_trio._codec import parse_json
from pgflow_trio._definitions._flow import definition_of
from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._definitions._spec import flow_from_spec
from pgflow_trio._exceptions import DefinitionError
from pgflow_trio._util import read_text


def load_object(target: str) -> object:
    """The object a `module:Attr` or `file.py:Attr` target names."""
    location, sep, attr = target.rpartition(":")
    if not sep or not location or not attr:
        raise DefinitionError(f"target {target!r}: expected package.module:Attr, path/to/file.py:Attr or spec.json")
    if location.endswith(".py"):
        path = Path(location).resolve()
        read_text(path, f"target {target!r}:")  # says why a missing, unreadable or non-UTF-8 file cannot be loaded
        name = f"pgflow_trio_target_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise DefinitionError(f"target {target!r}: cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # annotations and attrs need the module registered
            try:
                spec.loader.exec_module(module)
            except SyntaxError as exc:
                del sys.modules[name]
                raise DefinitionError(f"target {target!r}: {path}, line {exc.lineno}: {exc.msg}") from None
            except BaseException:
                del sys.modules[name]
                raise
    else:
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as exc:
            raise DefinitionError(f"target {target!r}: cannot import module {location!r} ({exc})") from exc
        except SyntaxError as exc:
            raise DefinitionError(f"target {target!r}: {exc.filename}, line {exc.lineno}: {exc.msg}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise DefinitionError(f"target {target!r}: {location} has no attribute {attr!r}") from None


def load_spec(path: Path) -> FlowDef:
    """The FlowDef a JSON spec file describes; DefinitionError when it is not JSON (NaN and infinities included),
    ConfigurationError when the file cannot be read."""
    text = read_text(path, "spec file")
    try:
        data = parse_json(text)
    except ValueError as exc:
        raise DefinitionError(f"{path}: not valid JSON: {exc}") from None
    return flow_from_spec(data, origin=str(path))


def load_target(target: str) -> tuple[FlowDef, object | None]:
    """(definition, flow/job class or None for a JSON spec)."""
    if target.endswith(".json"):
        return load_spec(Path(target)), None
    obj = load_object(target)
    return definition_of(obj), obj
