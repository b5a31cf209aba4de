"""The layout of a flow's DAG, layered left to right, for drawing as SVG.

A step's layer is the longest path to it from a root. An edge spanning several layers gets a waypoint in each layer
it crosses, so it is ordered with the nodes and passes between them. Within a layer, nodes and waypoints are ordered
by the barycenter of their neighbours over a few sweeps (keeping the order with the fewest crossings); every tie is
broken by the step's index, so the same flow always gives the same layout.

The work is bounded: crossings are counted in O(E log E) per pair of layers, a drawing of more than
`MAX_ORDERED_ITEMS` nodes and waypoints keeps the steps' own order (no sweeps), and layouts are cached per flow
definition (a flow's shape never changes under its slug: a new shape is a new definition)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import attrs

from pgflow_trio._definitions._diff import SQL_DEFAULTS
from pgflow_trio._definitions._model import FlowDef, Options, StepDef

MARGIN = 16.0
"""Space around the drawing."""
NODE_HEIGHT = 44.0
MIN_NODE_WIDTH = 96.0
NODE_PADDING = 12.0
"""Space left and right of a node's text."""
LAYER_GAP = 64.0
"""Horizontal space between two layers: where the edges curve."""
NODE_GAP = 18.0
"""Vertical space between two nodes of a layer."""
WAYPOINT_HEIGHT = 8.0
"""The vertical room a long edge takes where it passes through a layer."""
SWEEPS = 6
MAX_ORDERED_ITEMS = 1500
"""Beyond this many nodes and waypoints (a dense flow of ~25 steps and more) the layers keep the steps' own order:
the sweeps' work grows with the square of the drawing, and a drawing that big is read by hovering anyway."""
LAYOUT_CACHE = 256
"""Layouts kept (one per flow definition)."""
PORT_GAP = 7.0
"""Vertical space between the ends of edges on one side of a node."""
PORT_MARGIN = 8.0
"""Edge ends keep this far from a node's corners."""

_STEP_OPTIONS = ("max_attempts", "base_delay", "timeout", "start_delay")


@attrs.frozen
class Node:
    slug: str
    x: float
    y: float
    width: float
    height: float
    layer: int
    is_map: bool
    options: tuple[tuple[str, Any], ...]
    """The step's own options that differ from the flow's (max_attempts, base_delay, timeout, start_delay)."""


@attrs.frozen
class Edge:
    source: str
    target: str
    points: tuple[tuple[float, float], ...]
    """From the right side of the source to the left side of the target."""

    @property
    def path(self) -> str:
        """The SVG path through the points: cubic curves leaving and entering each point horizontally."""
        (x0, y0), *rest = self.points
        parts = [f"M{_n(x0)},{_n(y0)}"]
        for x1, y1 in rest:
            bend = (x1 - x0) / 2
            parts.append(f"C{_n(x0 + bend)},{_n(y0)} {_n(x1 - bend)},{_n(y1)} {_n(x1)},{_n(y1)}")
            x0, y0 = x1, y1
        return " ".join(parts)


@attrs.frozen
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    width: float
    height: float


@attrs.frozen
class StepMark:
    """A step's live state on a run's DAG: its status, and for a map step how many of its tasks are done."""

    status: str
    done: int = 0
    total: int | None = None


def _n(value: float) -> str:
    """A coordinate for SVG: short, no trailing zeros."""
    return f"{value:.1f}".removesuffix(".0")


# ---- sizes ----------------------------------------------------------------------------------------------------

_NARROW = set("fijlrt.,:;'!|()[] ")
_WIDE = set("mwMW@%")


def text_width(text: str, size: float = 12.0) -> float:
    """An estimate of the width of `text` in a bold sans-serif font of `size` pixels (no font metrics on the
    server), on the generous side: measured on DejaVu Sans Bold, wider than most system fonts."""
    units = 0.0
    for char in text:
        if char in _NARROW:
            units += 0.4
        elif char in _WIDE:
            units += 1.0
        elif char == "_":
            units += 0.5
        elif char.isupper():
            units += 0.77
        elif char.isdigit():
            units += 0.7
        else:
            units += 0.66
    return units * size


def _node_width(step: StepDef) -> float:
    """Wide enough for the slug, and for a map step's sub-line ("map · 9999/9999")."""
    sub = text_width("map · 9999/9999", 10.0) if step.is_map else 0.0
    return float(max(MIN_NODE_WIDTH, round(max(text_width(step.slug), sub) + 2 * NODE_PADDING)))


def step_options(flow: FlowDef, step: StepDef) -> tuple[tuple[str, Any], ...]:
    """The step's options that differ from what it would inherit from the flow (unset flow options count as
    pgflow's defaults; a start delay of 0 is no delay)."""
    differing: list[tuple[str, Any]] = []
    for name in _STEP_OPTIONS:
        value = getattr(step.options, name)
        if value is None:
            continue
        inherited = 0 if name == "start_delay" else getattr(flow.options, name)
        if inherited is None:
            inherited = getattr(SQL_DEFAULTS, name)
        if value != inherited:
            differing.append((name, value))
    return tuple(differing)


# ---- layers and order -----------------------------------------------------------------------------------------


@attrs.frozen
class _Item:
    """A node or a long edge's waypoint in one layer. `rank` breaks ties: a node's is (its step index, -1), a
    waypoint's (its source's index, its target's index), so a waypoint sorts after its source's own layer mates."""

    key: str
    rank: tuple[int, int]
    height: float


def _layers_of(steps: Sequence[StepDef]) -> dict[str, int]:
    """Each step's longest path from a root (steps come with their dependencies first)."""
    layer: dict[str, int] = {}
    for step in steps:
        layer[step.slug] = 1 + max((layer[d] for d in step.deps), default=-1)
    return layer


def _build_items(
    steps: Sequence[StepDef], layer: dict[str, int]
) -> tuple[list[list[_Item]], dict[str, list[str]], list[tuple[str, str, list[str]]]]:
    """Items per layer, each item's neighbours in the layer before (`ups`), and each edge with its waypoints."""
    index = {s.slug: i for i, s in enumerate(steps)}
    count = 1 + max(layer.values(), default=-1)
    layers: list[list[_Item]] = [[] for _ in range(count)]
    ups: dict[str, list[str]] = {}
    chains: list[tuple[str, str, list[str]]] = []
    for step in steps:
        layers[layer[step.slug]].append(_Item(step.slug, (index[step.slug], -1), NODE_HEIGHT))
        ups[step.slug] = []
    for step in steps:
        for dep in sorted(step.deps, key=index.__getitem__):
            previous = dep
            waypoints: list[str] = []
            for between in range(layer[dep] + 1, layer[step.slug]):
                key = f"{dep}\x00{step.slug}\x00{between}"
                layers[between].append(_Item(key, (index[dep], index[step.slug]), WAYPOINT_HEIGHT))
                ups[key] = [previous]
                waypoints.append(key)
                previous = key
            ups[step.slug].append(previous)
            chains.append((dep, step.slug, waypoints))
    for items in layers:
        items.sort(key=lambda item: item.rank)
    return layers, ups, chains


def _crossings(layers: list[list[_Item]], ups: dict[str, list[str]]) -> int:
    """How many pairs of edge segments cross between adjacent layers: with the segments sorted by their upper end,
    the pairs whose lower ends are in the opposite order (inversions, counted by merge sort)."""
    total = 0
    for upper, lower in itertools.pairwise(layers):
        position = {item.key: i for i, item in enumerate(upper)}
        segments = sorted((position[u], j) for j, item in enumerate(lower) for u in ups[item.key])
        total += _inversions([low for _, low in segments])
    return total


def _inversions(values: list[int]) -> int:
    """Pairs i < j with values[i] > values[j] (equal values do not count)."""
    if len(values) < 2:
        return 0
    middle = len(values) // 2
    left, right = values[:middle], values[middle:]
    count = _inversions(left) + _inversions(right)
    left.sort()
    right.sort()
    j = 0
    for value in left:  # for each value of the left half, the right half's values below it
        while j < len(right) and right[j] < value:
            j += 1
        count += j
    return count


def _sweep(layers: list[list[_Item]], neighbours: dict[str, list[str]], order: range) -> None:
    """Reorder each layer in `order` by the mean position of its items' neighbours in the layer just visited;
    an item without neighbours there keeps its own position; ties keep the tie-breaking rank."""
    for current, reference in zip(order[1:], order, strict=False):
        position = {item.key: i for i, item in enumerate(layers[reference])}

        def barycenter(pair: tuple[int, _Item], position: dict[str, int] = position) -> tuple[float, tuple[int, int]]:
            own, item = pair
            near = [position[n] for n in neighbours.get(item.key, ()) if n in position]
            return (sum(near) / len(near) if near else float(own), item.rank)

        layers[current] = [item for _, item in sorted(enumerate(layers[current]), key=barycenter)]


def _order(layers: list[list[_Item]], ups: dict[str, list[str]]) -> list[list[_Item]]:
    """Barycenter sweeps down and up; the first order with the fewest crossings wins. A drawing of more than
    `MAX_ORDERED_ITEMS` items keeps the steps' order."""
    if sum(len(items) for items in layers) > MAX_ORDERED_ITEMS:
        return layers
    downs: dict[str, list[str]] = {}
    for key, sources in ups.items():
        for source in sources:
            downs.setdefault(source, []).append(key)
    best = [list(items) for items in layers]
    fewest = _crossings(best, ups)
    current = [list(items) for items in layers]
    for sweep in range(SWEEPS):
        if fewest == 0:
            break
        if sweep % 2 == 0:
            _sweep(current, ups, range(len(current)))
        else:
            _sweep(current, downs, range(len(current) - 1, -1, -1))
        found = _crossings(current, ups)
        if found < fewest:
            best, fewest = [list(items) for items in current], found
    return best


def _ports(chains: list[tuple[str, str, list[str]]], centre_y: dict[str, float]) -> tuple[list[float], list[float]]:
    """Where each edge leaves its source and enters its target, as offsets from the node's middle: the edges of
    one side are spread over it in the order of where they come from or go to, so they do not cross there."""
    leaving = [0.0] * len(chains)
    entering = [0.0] * len(chains)
    outgoing: dict[str, list[tuple[float, int]]] = {}
    incoming: dict[str, list[tuple[float, int]]] = {}
    for number, (source, target, waypoints) in enumerate(chains):
        outgoing.setdefault(source, []).append((centre_y[waypoints[0] if waypoints else target], number))
        incoming.setdefault(target, []).append((centre_y[waypoints[-1] if waypoints else source], number))
    for sides, offsets in ((outgoing, leaving), (incoming, entering)):
        for ends in sides.values():
            ends.sort()
            gap = min(PORT_GAP, (NODE_HEIGHT - 2 * PORT_MARGIN) / max(1, len(ends) - 1))
            for position, (_, number) in enumerate(ends):
                offsets[number] = (position - (len(ends) - 1) / 2) * gap
    return leaving, entering


# ---- coordinates ----------------------------------------------------------------------------------------------


def layout(flow: FlowDef) -> Graph:
    """Nodes in layers by longest path from the roots, edges pointing right; the same flow gives the same layout
    (cached: only the slug, the steps and the flow's options shape it)."""
    return _layout(flow.slug, flow.steps, flow.options)


@functools.lru_cache(maxsize=LAYOUT_CACHE)
def _layout(slug: str, steps: tuple[StepDef, ...], options: Options) -> Graph:
    flow = FlowDef(slug, steps, options)
    if not flow.steps:
        return Graph((), (), 2 * MARGIN, 2 * MARGIN)
    layer = _layers_of(flow.steps)
    items_per_layer, ups, chains = _build_items(flow.steps, layer)
    layers = _order(items_per_layer, ups)
    widths = {s.slug: _node_width(s) for s in flow.steps}
    column_width = [max((widths.get(i.key, 0.0) for i in items), default=0.0) for items in layers]
    column_x: list[float] = []
    x = MARGIN
    for width in column_width:
        column_x.append(x)
        x += width + LAYER_GAP
    column_height = [sum(i.height for i in items) + NODE_GAP * (len(items) - 1) for items in layers]
    height = max(column_height) + 2 * MARGIN
    centre_y: dict[str, float] = {}
    for items, tall in zip(layers, column_height, strict=True):
        y = MARGIN + (max(column_height) - tall) / 2
        for item in items:
            centre_y[item.key] = y + item.height / 2
            y += item.height + NODE_GAP
    by_slug = {s.slug: s for s in flow.steps}
    nodes: list[Node] = []
    for number, items in enumerate(layers):
        for item in items:
            step = by_slug.get(item.key)
            if step is None:
                continue
            left = column_x[number] + (column_width[number] - widths[step.slug]) / 2
            nodes.append(
                Node(
                    slug=step.slug,
                    x=left,
                    y=centre_y[step.slug] - NODE_HEIGHT / 2,
                    width=widths[step.slug],
                    height=NODE_HEIGHT,
                    layer=number,
                    is_map=step.is_map,
                    options=step_options(flow, step),
                )
            )
    placed = {node.slug: node for node in nodes}
    leaving, entering = _ports(chains, centre_y)
    edges: list[Edge] = []
    for number_of_chain, (source, target, waypoints) in enumerate(chains):
        start, end = placed[source], placed[target]
        points = [(start.x + start.width, centre_y[source] + leaving[number_of_chain])]
        for number, key in enumerate(waypoints, start=layer[source] + 1):
            points.append((column_x[number], centre_y[key]))
            points.append((column_x[number] + column_width[number], centre_y[key]))
        points.append((end.x, centre_y[target] + entering[number_of_chain]))
        edges.append(Edge(source, target, tuple(points)))
    return Graph(tuple(nodes), tuple(edges), x - LAYER_GAP + MARGIN, height)
