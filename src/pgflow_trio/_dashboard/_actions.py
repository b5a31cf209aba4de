"""Actions behind confirmation: cancel, retry, rerun, pause/resume, prune (POST, CSRF-checked).

Skeleton: no routes until the module is written."""

from __future__ import annotations

from starlette.routing import BaseRoute

from pgflow_trio._dashboard._state import Dashboard


def routes(dash: Dashboard) -> list[BaseRoute]:
    return []
