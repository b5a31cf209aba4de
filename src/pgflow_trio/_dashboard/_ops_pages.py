"""Overview, Workers, Queues and Schedules pages.

Skeleton: placeholder routes until the module is written."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pgflow_trio._dashboard._state import Dashboard


def routes(dash: Dashboard) -> list[BaseRoute]:
    async def placeholder(request: Request) -> Response:
        return dash.render(request, "placeholder.html", {"heading": request.url.path})

    return [Route(p, placeholder) for p in ("/", "/workers", "/queues", "/schedules")]
