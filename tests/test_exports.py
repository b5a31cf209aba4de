"""The public surface is exactly what `pgflow_trio/__init__.py` re-exports; everything else is private."""

from __future__ import annotations

import pkgutil
import typing

import pgflow_trio


def test_public_names_are_reexports_of_private_modules() -> None:
    public = [name for name in dir(pgflow_trio) if not name.startswith("_")]
    assert public, "nothing exported"
    for name in public:
        obj = getattr(pgflow_trio, name)
        if typing.get_origin(obj) is not None:
            continue  # a type alias (a Union): it has no module of its own
        module = getattr(obj, "__module__", "pgflow_trio")
        assert module == "pgflow_trio" or module.startswith("pgflow_trio._"), (name, module)


def test_every_submodule_is_private() -> None:
    for info in pkgutil.iter_modules(pgflow_trio.__path__):
        assert info.name.startswith("_"), f"pgflow_trio.{info.name} should be private"
