"""The compiler is byte-identical to `compileFlow` of @pgflow/dsl 0.8.1 (run under Node), and validation is at
least as strict as the DSL's: everything the DSL rejects we reject; we also reject what pgflow's SQL would."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgflow_trio import DefinitionError, compile_flow, definition_of, flow_from_spec, spec_of
from pgflow_trio._store._dsn import user_cache_dir

from .helpers import cli, load_example

ROOT = Path(__file__).resolve().parent.parent
DSL_VERSION = "0.8.1"
Compiler = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.fixture(scope="session")
def dsl() -> Iterator[Compiler]:
    """@pgflow/dsl 0.8.1 installed from npm into the user cache, driven through one long-lived Node process."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed for the differential test (bash .ci/run installs them)")
    prefix = user_cache_dir() / f"dsl-{DSL_VERSION}"
    if not (prefix / "node_modules" / "@pgflow" / "dsl" / "package.json").is_file():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--no-save", "--prefix", str(prefix), f"@pgflow/dsl@{DSL_VERSION}"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    proc = subprocess.Popen(
        ["node", str(ROOT / "tests" / "node" / "dsl_compile.mjs"), str(prefix)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def compile_with_dsl(spec: dict[str, Any]) -> dict[str, Any]:
        stdin.write(json.dumps(spec) + "\n")
        stdin.flush()
        result: dict[str, Any] = json.loads(stdout.readline())
        return result

    yield compile_with_dsl
    stdin.close()
    proc.wait(timeout=10)
    stdout.close()


valid_slugs = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,12}", fullmatch=True)
odd_slugs = st.sampled_from(["run", "_x", "1a", "a-b", "a b", "a:b", "a#b", "a?b", "a/b", "café", "a.b", "x" * 129])
slugs = st.one_of(valid_slugs, valid_slugs, valid_slugs, odd_slugs)


def _options(draw: st.DrawFn, *, step: bool) -> dict[str, int]:
    ranges = {"max_attempts": (0, 6), "base_delay": (0, 8), "timeout": (1, 60)}
    if step:
        ranges["start_delay"] = (-1, 30)
    out = {}
    for name, (low, high) in ranges.items():
        if draw(st.booleans()):
            out[name] = draw(st.integers(low, high))
    return out


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(slugs, min_size=1, max_size=6))
    steps: list[dict[str, Any]] = []
    for index, name in enumerate(names):
        earlier = [s["slug"] for s in steps]
        is_map = draw(st.integers(0, 3)) == 0
        if is_map:
            deps = draw(st.lists(st.sampled_from(earlier), max_size=1)) if earlier else []
        else:
            deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        step: dict[str, Any] = {"slug": name, **_options(draw, step=True)}
        if deps:
            step["deps"] = deps
        if is_map:
            step["step_type"] = "map"
        steps.append(step)
        del index
    return {"slug": draw(slugs), **_options(draw, step=False), "steps": steps}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs())
def test_differential_against_pgflow_dsl(dsl: Compiler, spec: dict[str, Any]) -> None:
    theirs = dsl(spec)
    try:
        ours: list[str] | None = compile_flow(flow_from_spec(spec))
        error = ""
    except DefinitionError as exc:
        ours, error = None, str(exc)
    if ours is not None:
        assert theirs["ok"], f"the DSL rejected what we accepted: {theirs.get('error')}"
        assert ours == theirs["sql"]
    elif theirs["ok"]:
        # Stricter than the DSL only where pgflow's SQL (is_valid_slug) would reject the flow anyway.
        assert "reserved" in error or "ASCII letters" in error, error


def test_example_compiles_exactly_like_the_dsl(dsl: Compiler) -> None:
    result = cli("compile", "examples/process_order.py:ProcessOrder")
    assert result.returncode == 0, result.stderr
    flow = definition_of(load_example().ProcessOrder)
    theirs = dsl(spec_of(flow))
    assert theirs["ok"]
    assert result.stdout.splitlines() == theirs["sql"]
    assert result.stdout.splitlines() == [
        "SELECT pgflow.create_flow('process_order', max_attempts => 3);",
        "SELECT pgflow.add_step('process_order', 'validate');",
        "SELECT pgflow.add_step('process_order', 'charge', ARRAY['validate'], timeout => 30);",
        "SELECT pgflow.add_step('process_order', 'fulfill', ARRAY['charge']);",
    ]


def test_design_example_text() -> None:
    spec = {
        "slug": "analyze_website",
        "max_attempts": 3,
        "base_delay": 5,
        "timeout": 10,
        "steps": [
            {"slug": "website"},
            {"slug": "sentiment", "deps": ["website"], "max_attempts": 5, "timeout": 30},
            {"slug": "ship", "deps": ["website"], "start_delay": 0, "step_type": "map"},
        ],
    }
    assert compile_flow(flow_from_spec(spec)) == [
        "SELECT pgflow.create_flow('analyze_website', max_attempts => 3, base_delay => 5, timeout => 10);",
        "SELECT pgflow.add_step('analyze_website', 'website');",
        "SELECT pgflow.add_step('analyze_website', 'sentiment', ARRAY['website'], max_attempts => 5, timeout => 30);",
        "SELECT pgflow.add_step('analyze_website', 'ship', ARRAY['website'], start_delay => 0, step_type => 'map');",
    ]


def test_compile_cli_targets(tmp_path: Path) -> None:
    spec = tmp_path / "flow.json"
    spec.write_text(json.dumps({"slug": "from_json", "steps": [{"slug": "a"}, {"slug": "b", "deps": ["a"]}]}))
    result = cli("compile", str(spec))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "SELECT pgflow.create_flow('from_json');",
        "SELECT pgflow.add_step('from_json', 'a');",
        "SELECT pgflow.add_step('from_json', 'b', ARRAY['a']);",
    ]
    module = cli("compile", "examples.process_order:SendEmail")
    assert module.returncode == 0, module.stderr
    assert module.stdout.splitlines()[1] == "SELECT pgflow.add_step('send_email', 'perform');"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nothing_here", "expected package.module:Attr"),
        ("examples/missing.py:X", "does not exist"),
        ("examples/process_order.py:Nope", "has no attribute 'Nope'"),
        ("no_such_module_xyz:X", "cannot import module"),
        ("examples/process_order.py:OrderInput", "is not a flow or job"),
        ("missing.json", "spec file missing.json does not exist"),
    ],
)
def test_compile_cli_bad_targets(target: str, message: str) -> None:
    result = cli("compile", target)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith("error: ")


def test_compile_cli_invalid_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = cli("compile", str(bad))
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr
