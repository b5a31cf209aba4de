"""The public surface is exactly what `pgflow_trio/__init__.py` re-exports; everything else is private."""

from __future__ import annotations

import inspect
import pkgutil
import types
import typing
from pathlib import Path

import pytest

import pgflow_trio

PUBLIC_SUBMODULES: frozenset[str] = frozenset({"testing", "events", "dashboard"})


def _public() -> list[str]:
    """The names `pgflow_trio` exports. Left out: submodules (`pgflow_trio.testing`, imported as the pytest plugin),
    and `@py_builtins`/`@pytest_ar`, which pytest's assertion rewriting adds (it rewrites the packages of pytest
    plugins, and pgflow_trio ships one)."""
    return sorted(
        name
        for name in dir(pgflow_trio)
        if not name.startswith("_")
        and name.isidentifier()
        and not isinstance(getattr(pgflow_trio, name), types.ModuleType)
    )


def test_public_names_are_reexports_of_private_modules() -> None:
    public = _public()
    assert public, "nothing exported"
    for name in public:
        obj = getattr(pgflow_trio, name)
        if typing.get_origin(obj) is not None:
            continue  # a type alias (a Union): it has no module of its own
        module = getattr(obj, "__module__", "pgflow_trio")
        assert module == "pgflow_trio" or module.startswith("pgflow_trio._"), (name, module)


def test_public_classes_and_functions_report_the_public_module() -> None:
    for name in _public():
        obj = getattr(pgflow_trio, name)
        if inspect.isfunction(obj) or isinstance(obj, type):
            assert obj.__module__ == "pgflow_trio", name


def test_public_attrs_classes_still_resolve_and_round_trip() -> None:
    import attrs
    import cattrs

    for name in _public():
        obj = getattr(pgflow_trio, name)
        if isinstance(obj, type) and attrs.has(obj):
            assert all(not isinstance(f.type, str) for f in attrs.fields(attrs.resolve_types(obj))), name
    converter = cattrs.Converter()
    for value in (pgflow_trio.Options(max_attempts=3, timeout=30), pgflow_trio.Schedule("@daily", name="d")):
        assert converter.structure(converter.unstructure(value), type(value)) == value


def test_every_submodule_is_private() -> None:
    for info in pkgutil.iter_modules(pgflow_trio.__path__):
        assert info.name.startswith("_") or info.name in PUBLIC_SUBMODULES, f"pgflow_trio.{info.name} is public"


def test_mypy_sees_every_public_name(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    root = Path(__file__).resolve().parent.parent
    probe = tmp_path / "public_names.py"
    probe.write_text("import pgflow_trio\n\n" + "".join(f"pgflow_trio.{name}\n" for name in _public()))
    out, err, status = api.run(["--config-file", str(root / "mypy.ini"), "--no-incremental", str(probe)])
    assert status == 0, out + err
