"""Make sure the database holds the flow a worker serves: create it when absent, refuse to start when it differs."""

from __future__ import annotations

import functools

from pgflow_trio._definitions._diff import Difference, flow_differences
from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._exceptions import DefinitionError, FlowMismatch
from pgflow_trio._store import Database, RawConnection
from pgflow_trio._store._flows import create_flow, lock_flow, read_flow


def mismatch(flow: FlowDef, differences: tuple[Difference, ...] | None, problem: str = "") -> FlowMismatch:
    """The error for a database holding another shape of `flow`: every difference, and the commands that
    resolve it."""
    details = "\n  ".join(d.describe() for d in differences) if differences else problem
    return FlowMismatch(
        f"flow {flow.slug!r} in the database differs from {flow.origin or 'the definition'}:\n  {details}"
        f"\npgflow flows are immutable: give the changed flow a new slug (e.g. {flow.slug}_v2), or delete "
        f"the old one with its runs: python -m pgflow_trio flows delete {flow.slug} --force"
    )


async def ensure_stored(con: RawConnection, *, flow: FlowDef, create: bool = True) -> bool:
    """In one transaction: create `flow` if absent (returns True then); FlowMismatch when the database holds
    another shape of it."""
    async with con.transaction():
        await lock_flow(con, slug=flow.slug)
        try:
            stored = await read_flow(con, slug=flow.slug)
        except DefinitionError as exc:
            raise mismatch(flow, None, f"it is not a valid definition: {exc}") from exc
        if stored is None:
            if not create:
                raise DefinitionError(f"flow {flow.slug!r} does not exist in the database")
            await create_flow(con, flow=flow)
            return True
        differences = flow_differences(flow, stored)
        if differences:
            raise mismatch(flow, differences)
        return False


async def ensure_flow(db: Database, flow: FlowDef, *, create: bool = True) -> bool:
    """Create `flow` if absent (returns True then); raise FlowMismatch when the database holds another shape."""
    return await db.run(functools.partial(ensure_stored, flow=flow, create=create))
