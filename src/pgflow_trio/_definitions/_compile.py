"""The definition model -> SQL statements, byte-identical to `compileFlow` of @pgflow/dsl 0.8.1.

Slugs are validated ([a-zA-Z][a-zA-Z0-9_]*) before they get here, so quoting them as literals is safe.
"""

from __future__ import annotations

from pgflow_trio._definitions._model import FlowDef, Options


def _options_clause(options: Options) -> str:
    parts = [f"{name} => {value}" for name, value in options.items()]
    return ", " + ", ".join(parts) if parts else ""


def compile_flow(flow: FlowDef) -> list[str]:
    """`SELECT pgflow.create_flow(...)` followed by one `SELECT pgflow.add_step(...)` per step."""
    statements = [f"SELECT pgflow.create_flow('{flow.slug}'{_options_clause(flow.options)});"]
    for step in flow.steps:
        deps = ", ARRAY[" + ", ".join(f"'{dep}'" for dep in step.deps) + "]" if step.deps else ""
        step_type = ", step_type => 'map'" if step.is_map else ""
        statements.append(
            f"SELECT pgflow.add_step('{flow.slug}', '{step.slug}'{deps}{_options_clause(step.options)}{step_type});"
        )
    return statements
