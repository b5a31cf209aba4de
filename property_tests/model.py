"""The in-memory model the state machine checks the real system against.

A run's input is a list whose first element is a header `{"id": n, "plan": {step: behaviour}}`; the rest are small
integers (what a root map fans out over, together with the header). A behaviour says on which attempts the step's
handler fails (`fail_until`: attempts 1..k fail) and on which it overruns its timeout (`hang`: that attempt sleeps
until cancelled). Outputs are pure functions of a step's inputs, so the model can say what every handler must
receive and what every run must end with.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

Spec = dict[str, Any]


def single_output(slug: str, deps: dict[str, Any]) -> list[str]:
    """A single step's output: a list (so any step can feed a map), naming the step and a digest of its inputs."""
    digest = hashlib.sha1(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:8]
    return [f"{slug}:{digest}", f"{slug}#"]


def element_output(slug: str, element: Any) -> str:
    key = "h" if isinstance(element, dict) else json.dumps(element, sort_keys=True)
    return f"{slug}({key})"


def header(run_input: Any) -> dict[str, Any]:
    if isinstance(run_input, list) and run_input and isinstance(run_input[0], dict):
        return run_input[0]
    return {"id": -1, "plan": {}}


def effective(spec: Spec, step: dict[str, Any], option: str, default: int) -> int:
    value = step.get(option, spec.get(option))
    return default if value is None else int(value)


def succeeds_on(behaviour: dict[str, Any], max_attempts: int) -> int | None:
    """The attempt on which the step's tasks succeed, or None when every attempt fails."""
    for attempt in range(1, max_attempts + 1):
        if attempt > behaviour.get("fail_until", 0) and attempt != behaviour.get("hang"):
            return attempt
    return None


def predict(spec: Spec, run_input: list[Any]) -> tuple[str, Any, dict[str, Any]]:
    """(status, run output, each step's output) with no interference (no killed workers).

    Every step whose dependencies all succeed has an output, even in a run that fails: a step independent of the
    failing one may complete (and its dependents start) before the failure ends the run."""
    plan = header(run_input)["plan"]
    outputs: dict[str, Any] = {}
    failed = False
    for step in spec["steps"]:
        slug = step["slug"]
        deps = step.get("deps", [])
        if any(d not in outputs for d in deps):
            continue  # a dependency failed: this step never runs
        if step.get("step_type") == "map":
            array = outputs[deps[0]] if deps else run_input
            if not array:
                outputs[slug] = []
                continue
            value: Any = [element_output(slug, e) for e in array]
        else:
            value = single_output(slug, {d: outputs[d] for d in deps})
        if succeeds_on(plan.get(slug, {}), effective(spec, step, "max_attempts", 3)) is None:
            failed = True
            continue
        outputs[slug] = value
    if failed:
        return "failed", None, outputs
    used = {d for s in spec["steps"] for d in s.get("deps", [])}
    return "completed", {s["slug"]: outputs[s["slug"]] for s in spec["steps"] if s["slug"] not in used}, outputs


def expected_input(spec: Spec, step_slug: str, run_input: list[Any], outputs: dict[str, Any], index: int) -> Any:
    """What pgflow must hand the step's task `index`."""
    step = next(s for s in spec["steps"] if s["slug"] == step_slug)
    deps = step.get("deps", [])
    if step.get("step_type") == "map":
        array = outputs[deps[0]] if deps else run_input
        return array[index]
    return {"run": run_input, **{d: outputs[d] for d in deps}}
