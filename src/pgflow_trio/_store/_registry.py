"""Make sure the database holds the flow a worker serves: create it when absent, refuse to start when it differs."""

from __future__ import annotations

from typing import Any

from pgflow_trio._definitions._compile import compile_flow
from pgflow_trio._definitions._model import FlowDef
from pgflow_trio._exceptions import DefinitionError, FlowMismatch
from pgflow_trio._store import Connection, Database

SQL_DEFAULTS = {"max_attempts": 3, "base_delay": 5, "timeout": 60}  # pgflow.create_flow defaults


def expected_shape(flow: FlowDef) -> dict[str, Any]:
    return {
        "options": {name: getattr(flow.options, name) or default for name, default in SQL_DEFAULTS.items()},
        "steps": [
            {
                "slug": s.slug,
                "step_type": s.step_type,
                "deps": sorted(s.deps),
                "max_attempts": s.options.max_attempts,
                "base_delay": s.options.base_delay,
                "timeout": s.options.timeout,
                "start_delay": s.options.start_delay,
            }
            for s in flow.steps
        ],
    }


async def read_flow_shape(con: Connection, slug: str) -> dict[str, Any] | None:
    row = await con.fetchrow(
        "SELECT opt_max_attempts, opt_base_delay, opt_timeout FROM pgflow.flows WHERE flow_slug = $1", slug
    )
    if row is None:
        return None
    steps = await con.fetch(
        """SELECT s.step_slug, s.step_type, s.opt_max_attempts, s.opt_base_delay, s.opt_timeout, s.opt_start_delay,
                  coalesce((SELECT array_agg(d.dep_slug ORDER BY d.dep_slug) FROM pgflow.deps d
                            WHERE d.flow_slug = s.flow_slug AND d.step_slug = s.step_slug), '{}') AS deps
           FROM pgflow.steps s WHERE s.flow_slug = $1 ORDER BY s.step_index""",
        slug,
    )
    return {
        "options": {"max_attempts": row[0], "base_delay": row[1], "timeout": row[2]},
        "steps": [
            {
                "slug": r["step_slug"],
                "step_type": r["step_type"],
                "deps": list(r["deps"]),
                "max_attempts": r["opt_max_attempts"],
                "base_delay": r["opt_base_delay"],
                "timeout": r["opt_timeout"],
                "start_delay": r["opt_start_delay"],
            }
            for r in steps
        ],
    }


def describe_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    lines = []
    for name, value in expected["options"].items():
        if actual["options"][name] != value:
            lines.append(f"flow {name}: {value} in code, {actual['options'][name]} in the database")
    ours = [s["slug"] for s in expected["steps"]]
    theirs = [s["slug"] for s in actual["steps"]]
    if ours != theirs:
        lines.append(f"steps: {', '.join(ours)} in code; {', '.join(theirs)} in the database")
    by_slug = {s["slug"]: s for s in actual["steps"]}
    for step in expected["steps"]:
        other = by_slug.get(step["slug"])
        if other is None:
            continue
        for key, value in step.items():
            if key != "slug" and other[key] != value:
                lines.append(f"step {step['slug']!r} {key}: {value!r} in code, {other[key]!r} in the database")
    return lines


async def ensure_flow(db: Database, flow: FlowDef, *, create: bool = True) -> bool:
    """Create `flow` if absent (returns True then); raise FlowMismatch when the database holds another shape."""
    async with db.transaction() as tx:
        await tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('pgflow_trio:flow:' || $1, 0))", flow.slug)
        actual = await read_flow_shape(tx, flow.slug)
        if actual is None:
            if not create:
                raise DefinitionError(f"flow {flow.slug!r} does not exist in the database")
            for statement in compile_flow(flow):
                await tx.execute(statement)
            return True
        differences = describe_differences(expected_shape(flow), actual)
        if differences:
            raise FlowMismatch(
                f"flow {flow.slug!r} in the database differs from {flow.origin or 'the definition'}:\n  "
                + "\n  ".join(differences)
                + f"\npgflow flows are immutable: give the changed flow a new slug (e.g. {flow.slug}_v2), or delete "
                f"the old one with its runs: python -m pgflow_trio flows delete {flow.slug} --force"
            )
        return False
