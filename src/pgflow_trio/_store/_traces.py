"""Trace contexts of runs (`pgflow_trio.run_traces`): written when a run starts, read per claimed batch."""

from __future__ import annotations

import uuid

import attrs

from pgflow_trio._store import RawConnection
from pgflow_trio._store._control import rerun


@attrs.frozen
class TraceContext:
    """A W3C trace context as text: the `traceparent` header and the optional `tracestate`."""

    traceparent: str
    tracestate: str | None = None


async def record_trace(con: RawConnection, *, run_id: uuid.UUID, trace: TraceContext) -> None:
    """Store the trace context of a run just started (in the caller's transaction). A run keeps its first one."""
    await con.execute(
        "INSERT INTO pgflow_trio.run_traces (run_id, traceparent, tracestate) VALUES ($1, $2, $3) "
        "ON CONFLICT (run_id) DO NOTHING",
        run_id,
        trace.traceparent,
        trace.tracestate,
    )


async def trace_contexts(con: RawConnection, *, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, TraceContext]:
    """The stored trace contexts of these runs (runs started without tracing have none)."""
    rows = await con.fetch(
        "SELECT run_id, traceparent, tracestate FROM pgflow_trio.run_traces WHERE run_id = ANY($1::uuid[])",
        run_ids,
    )
    return {r["run_id"]: TraceContext(r["traceparent"], r["tracestate"]) for r in rows}


async def rerun_with_trace(
    con: RawConnection, *, run_id: uuid.UUID, trace: TraceContext | None
) -> tuple[uuid.UUID, str]:
    """`rerun` (a new run of `run_id`'s flow and input), storing the new run's trace context in its transaction."""
    async with con.transaction():
        new_id, slug = await rerun(con, run_id=run_id)
        if trace is not None:
            await record_trace(con, run_id=new_id, trace=trace)
    return new_id, slug
