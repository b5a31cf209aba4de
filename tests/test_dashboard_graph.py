"""The DAG layout (`_dashboard/_graph.py`) and its SVG (`templates/_dag.html`): properties over random DAGs, and
what the drawing says (classes, marks, options, escaping)."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from typing import Any

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from pgflow_trio import flow_from_spec
from pgflow_trio._dashboard import _graph
from pgflow_trio._dashboard._graph import Graph, Node, StepMark, layout, text_width
from pgflow_trio._dashboard._state import environment
from pgflow_trio._definitions._model import FlowDef, Options, StepDef, StepType

SVG = "{http://www.w3.org/2000/svg}"


def spec_flow(steps: list[dict[str, Any]], **options: int) -> FlowDef:
    return flow_from_spec({"slug": "graph_test", "steps": steps, **options})


def diamond() -> FlowDef:
    return spec_flow(
        [
            {"slug": "fetch"},
            {"slug": "parse", "deps": ["fetch"], "step_type": "map"},
            {"slug": "summarize", "deps": ["fetch"], "max_attempts": 7},
            {"slug": "save", "deps": ["parse", "summarize", "fetch"]},
        ],
        max_attempts=3,
    )


@st.composite
def dags(draw: st.DrawFn) -> FlowDef:
    """A random flow: steps in dependency order, each depending on any subset of the earlier ones."""
    count = draw(st.integers(1, 14))
    slugs = draw(
        st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,24}", fullmatch=True), min_size=count, max_size=count, unique=True)
    )
    steps = []
    for i, slug in enumerate(slugs):
        deps = draw(st.lists(st.sampled_from(slugs[:i]), unique=True, max_size=4)) if i else []
        # a map step maps over the flow input or over its one dependency's array
        kind: StepType = draw(st.sampled_from(["single", "map"])) if len(deps) <= 1 else "single"
        steps.append(StepDef(slug=slug, step_type=kind, deps=tuple(deps)))
    return FlowDef(slug="random", steps=tuple(steps))


def overlap(a: Node, b: Node) -> bool:
    return a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height and b.y < a.y + a.height


@settings(max_examples=150, deadline=None)
@given(dags())
def test_random_dags_lay_out_without_overlaps_edges_pointing_right_inside_the_bounds(flow: FlowDef) -> None:
    graph = layout(flow)
    nodes = {n.slug: n for n in graph.nodes}
    assert sorted(nodes) == sorted(s.slug for s in flow.steps)
    for a, b in itertools.combinations(graph.nodes, 2):
        assert not overlap(a, b), (a, b)
    for node in graph.nodes:
        assert node.width >= text_width(node.slug)
        assert node.x >= 0 and node.x + node.width <= graph.width
        assert node.y >= 0 and node.y + node.height <= graph.height
        deps = flow.step(node.slug).deps
        assert node.layer == (1 + max(nodes[d].layer for d in deps) if deps else 0)
    assert sorted((e.source, e.target) for e in graph.edges) == sorted((d, s.slug) for s in flow.steps for d in s.deps)
    for edge in graph.edges:
        source, target = nodes[edge.source], nodes[edge.target]
        assert source.x + source.width < target.x
        (x0, y0), (x1, y1) = edge.points[0], edge.points[-1]
        assert x0 == source.x + source.width and source.y < y0 < source.y + source.height, "from the right side"
        assert x1 == target.x and target.y < y1 < target.y + target.height, "to the left side"
        xs = [x for x, _ in edge.points]
        assert xs == sorted(xs), "an edge runs left to right"
        for x, y in edge.points:
            assert 0 <= x <= graph.width and 0 <= y <= graph.height
    for node in graph.nodes:
        ends = sorted((e.points[-2][1], e.points[-1][1]) for e in graph.edges if e.target == node.slug)
        assert [end for _, end in ends] == sorted({end for _, end in ends}), "entering edges spread, not crossing"
        starts = sorted((e.points[1][1], e.points[0][1]) for e in graph.edges if e.source == node.slug)
        assert [start for _, start in starts] == sorted({start for _, start in starts}), "leaving edges spread"
    assert layout(flow) == graph


@settings(max_examples=50, deadline=None)
@given(dags())
def test_long_edges_pass_between_the_nodes_of_the_layers_they_cross(flow: FlowDef) -> None:
    graph = layout(flow)
    for edge in graph.edges:
        for x, y in edge.points[1:-1]:
            for node in graph.nodes:
                assert not (node.x < x < node.x + node.width and node.y <= y <= node.y + node.height), (edge, node)


def test_layers_follow_the_longest_path_and_the_same_flow_always_gives_the_same_layout() -> None:
    graph = layout(diamond())
    layers = {n.slug: n.layer for n in graph.nodes}
    assert layers == {"fetch": 0, "parse": 1, "summarize": 1, "save": 2}
    assert graph == layout(diamond())
    long = next(e for e in graph.edges if (e.source, e.target) == ("fetch", "save"))
    assert len(long.points) == 4, "one waypoint pair for the layer it crosses"
    assert long.path.startswith("M") and long.path.count("C") == 3


def test_a_chain_lies_on_one_line_and_nodes_fit_their_slugs() -> None:
    flow = spec_flow([{"slug": "a"}, {"slug": "b" * 40, "deps": ["a"]}, {"slug": "c", "deps": ["b" * 40]}])
    graph = layout(flow)
    assert len({n.y for n in graph.nodes}) == 1
    short, long, _ = graph.nodes
    assert long.width > short.width >= text_width("a")
    assert long.width >= text_width("b" * 40)


def test_barycenter_ordering_untangles_crossed_edges() -> None:
    # Defined so that the first layer's order (a, b) and the second's (x, y) would cross: a->y, b->x.
    flow = spec_flow(
        [{"slug": "a"}, {"slug": "b"}, {"slug": "x", "deps": ["b"]}, {"slug": "y", "deps": ["a"]}],
    )
    nodes = {n.slug: n for n in layout(flow).nodes}
    assert (nodes["a"].y < nodes["b"].y) == (nodes["y"].y < nodes["x"].y)


def test_node_options_are_only_those_that_differ_from_the_flow() -> None:
    steps = (
        StepDef("same", options=Options(max_attempts=3)),
        StepDef("own", deps=("same",), options=Options(max_attempts=5, timeout=60, start_delay=10)),
        StepDef("defaults", deps=("same",), options=Options(base_delay=5, timeout=30, start_delay=0)),
    )
    nodes = {n.slug: n for n in layout(FlowDef("opts", steps, options=Options(max_attempts=3))).nodes}
    assert nodes["same"].options == ()
    assert nodes["own"].options == (("max_attempts", 5), ("start_delay", 10)), "timeout 60 is the default"
    assert nodes["defaults"].options == (("timeout", 30),), "base_delay 5 is pgflow's default, start_delay 0 none"


def test_an_empty_flow_is_an_empty_graph() -> None:
    graph = layout(FlowDef("empty", ()))
    assert graph.nodes == () and graph.edges == () and graph.width > 0 and graph.height > 0


def draw(graph: Graph, marks: dict[str, StepMark] | None = None) -> ET.Element:
    template = environment().from_string('{% from "_dag.html" import dag %}{{ dag(graph, marks) }}')
    svg = template.render(graph=graph, marks=marks or {})
    assert "style=" not in svg, "the Content-Security-Policy forbids inline styles"
    return ET.fromstring(svg)


def test_the_svg_has_a_node_per_step_with_its_state_and_an_edge_per_dependency() -> None:
    graph = layout(diamond())
    root = draw(graph, {"fetch": StepMark("completed"), "parse": StepMark("started", 3, 8)})
    assert root.get("class") == "dag" and root.get("viewBox") == f"0 0 {graph.width} {graph.height}"
    groups = {g.get("data-step"): g for g in root.iter(f"{SVG}g")}
    assert set(groups) == {"fetch", "parse", "summarize", "save"}
    assert groups["fetch"].get("class") == "node state-completed"
    assert groups["parse"].get("class") == "node map state-started"
    assert groups["save"].get("class") == "node", "no mark, no state"
    subs = [t.text for t in groups["parse"].iter(f"{SVG}text") if t.get("class") == "sub"]
    assert subs == ["map · 3/8"]
    title = groups["summarize"].find(f"{SVG}title")
    assert title is not None and "max_attempts: 7" in (title.text or "")
    fetch_title = groups["fetch"].find(f"{SVG}title")
    assert fetch_title is not None and "options: as the flow's" in (fetch_title.text or "")
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    assert len(edges) == 5 and all(p.get("marker-end") == "url(#dag-arrow)" for p in edges)


def test_slugs_and_statuses_from_the_database_are_escaped() -> None:
    nasty = '"><img src=x onerror=alert(1)>'
    graph = Graph((Node("<script>alert(1)</script>", 0, 0, 100, 44, 0, False, ()),), (), 200, 60)
    root = draw(graph, {"<script>alert(1)</script>": StepMark(nasty)})
    (group,) = root.iter(f"{SVG}g")
    assert group.get("data-step") == "<script>alert(1)</script>"
    assert group.get("class") == f"node state-{nasty}"
    assert [t.text for t in group.iter(f"{SVG}text")] == ["<script>alert(1)</script>"]
    assert not list(root.iter(f"{SVG}script")) and not list(root.iter(f"{SVG}img"))


def dense(count: int, slug: str = "dense") -> FlowDef:
    """Every step depends on every earlier one: the most edges and waypoints a flow of `count` steps can have."""
    return attrs.evolve(
        spec_flow([{"slug": f"s{i}", "deps": [f"s{j}" for j in range(i)]} for i in range(count)]), slug=slug
    )


def test_a_dense_60_step_flow_lays_out_with_bounded_work_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A complete DAG of 60 steps has 1,770 edges and 34,220 waypoints: the sweeps' quadratic work is skipped
    (before, this flow took 11 s of blocked event loop per page view), and the layout is computed once."""
    work = {"sweeps": 0, "crossings": 0}
    sweep, crossings = _graph._sweep, _graph._crossings

    def counted_sweep(*args: Any) -> None:
        work["sweeps"] += 1
        sweep(*args)

    def counted_crossings(*args: Any) -> int:
        work["crossings"] += 1
        return crossings(*args)

    monkeypatch.setattr(_graph, "_sweep", counted_sweep)
    monkeypatch.setattr(_graph, "_crossings", counted_crossings)
    flow = dense(60)
    graph = layout(flow)
    assert len(graph.nodes) == 60 and len(graph.edges) == 60 * 59 // 2
    assert work == {"sweeps": 0, "crossings": 0}
    assert layout(dense(60)) is graph, "cached per flow definition"
    assert work == {"sweeps": 0, "crossings": 0}
    small = layout(dense(8, slug="dense_small"))
    assert work["sweeps"] <= _graph.SWEEPS and work["crossings"] <= _graph.SWEEPS + 1
    assert len(small.edges) == 28


def test_layouts_are_cached_by_slug_and_definition() -> None:
    one = layout(diamond())
    assert layout(diamond()) is one
    other = layout(attrs.evolve(diamond(), slug="graph_other"))
    assert other is not one and other.nodes == one.nodes
    changed = spec_flow([{"slug": "fetch"}, {"slug": "parse", "deps": ["fetch"]}])
    assert layout(changed) != one


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=30))
def test_crossings_are_counted_as_every_pair_compared_would(segments: list[tuple[int, int]]) -> None:
    uppers = sorted({u for u, _ in segments})
    lowers = sorted({low for _, low in segments})
    upper = [_graph._Item(f"u{u}", (u, -1), 1.0) for u in uppers]
    lower = [_graph._Item(f"l{low}", (low, -1), 1.0) for low in lowers]
    ups = {f"l{low}": [f"u{u}" for u, lw in segments if lw == low] for low in lowers}
    ups.update({f"u{u}": [] for u in uppers})
    position = {u: i for i, u in enumerate(uppers)}
    low_position = {low: j for j, low in enumerate(lowers)}
    pairs = [(position[u], low_position[low]) for u, low in segments]
    expected = sum(1 for a, b in itertools.combinations(pairs, 2) if (a[0] - b[0]) * (a[1] - b[1]) < 0)
    assert _graph._crossings([upper, lower], ups) == expected
