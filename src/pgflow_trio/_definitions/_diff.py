"""How two definitions of one flow differ in what the database stores: options, steps, their types,
dependencies and options. Used to compare the code with the database (workers, `upsert_flow`)."""

from __future__ import annotations

import attrs

from pgflow_trio._definitions._model import FlowDef, Options, StepDef

SQL_DEFAULTS = Options(max_attempts=3, base_delay=5, timeout=60)
"""What `pgflow.create_flow` stores for a flow option left unset."""

_FLOW_OPTIONS = ("max_attempts", "base_delay", "timeout")
_STEP_FIELDS = ("step_type", "deps", "max_attempts", "base_delay", "timeout", "start_delay")


@attrs.frozen
class Difference:
    """One stored property where two definitions differ. `path` names it: a flow option (`max_attempts`), the list
    of step slugs (`steps`), or a property of a step both have (`steps.charge.timeout`; `deps` as sorted tuples)."""

    path: str
    ours: object
    theirs: object

    def describe(self, ours: str = "in code", theirs: str = "in the database") -> str:
        """One line naming the property and both values."""
        parts = self.path.split(".")
        if parts == ["steps"]:
            assert isinstance(self.ours, tuple) and isinstance(self.theirs, tuple)
            return f"steps: {', '.join(self.ours)} {ours}; {', '.join(self.theirs)} {theirs}"
        if parts[0] == "steps":
            return f"step {parts[1]!r} {parts[2]}: {self.ours!r} {ours}, {self.theirs!r} {theirs}"
        return f"flow {self.path}: {self.ours} {ours}, {self.theirs} {theirs}"


def _flow_option(flow: FlowDef, name: str) -> int | None:
    value: int | None = getattr(flow.options, name)
    return value if value is not None else getattr(SQL_DEFAULTS, name)


def _step_field(step: StepDef, name: str) -> object:
    if name == "step_type":
        return step.step_type
    if name == "deps":
        return tuple(sorted(step.deps))
    return getattr(step.options, name)


def flow_differences(ours: FlowDef, theirs: FlowDef) -> tuple[Difference, ...]:
    """Every stored property where `ours` and `theirs` differ, flow options first (unset ones count as pgflow's
    defaults), then the step list, then each step both have. Empty when the database would hold the same flow."""
    found = [
        Difference(name, _flow_option(ours, name), _flow_option(theirs, name))
        for name in _FLOW_OPTIONS
        if _flow_option(ours, name) != _flow_option(theirs, name)
    ]
    our_slugs = tuple(s.slug for s in ours.steps)
    their_slugs = tuple(s.slug for s in theirs.steps)
    if our_slugs != their_slugs:
        found.append(Difference("steps", our_slugs, their_slugs))
    their_steps = {s.slug: s for s in theirs.steps}
    for step in ours.steps:
        other = their_steps.get(step.slug)
        if other is None:
            continue
        for name in _STEP_FIELDS:
            mine, its = _step_field(step, name), _step_field(other, name)
            if mine != its:
                found.append(Difference(f"steps.{step.slug}.{name}", mine, its))
    return tuple(found)
