"""The layout of a flow's DAG, layered left to right, for drawing as SVG.

Skeleton: the signatures are final; the layout itself is not written yet."""

from __future__ import annotations

from typing import Any

import attrs

from pgflow_trio._definitions._model import FlowDef


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


def layout(flow: FlowDef) -> Graph:
    """Nodes in layers by longest path from the roots, edges pointing right; the same flow gives the same layout."""
    nodes = tuple(Node(s.slug, 20 + 200 * i, 20, 160, 48, i, False, ()) for i, s in enumerate(flow.steps))
    return Graph(nodes, (), 40 + 200 * len(nodes), 88)
