"""Small helpers shared by several modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


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
