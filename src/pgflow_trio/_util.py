"""Small helpers shared by every layer; imports only `_exceptions`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pgflow_trio._exceptions import ConfigurationError


def single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only exception inside (possibly nested) single-member groups, or None when there are several."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def unwrap_single_errors() -> AsyncIterator[None]:
    """Nurseries wrap errors in ExceptionGroups; public context managers re-raise a lone error unwrapped."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


def unreadable(path: Path, exc: OSError | UnicodeDecodeError) -> str:
    """Why the file a user named cannot be read, in words (for any message naming that file)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"{path} is not UTF-8 text (invalid byte at offset {exc.start})"
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a directory, not a file"
    if isinstance(exc, PermissionError):
        return f"{path} cannot be read: permission denied"
    return f"{path} cannot be read: {exc.strerror or exc}"


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file the user named; ConfigurationError (starting with `what`) when it cannot be read."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(path))
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{what} {unreadable(path, exc)}") from None
