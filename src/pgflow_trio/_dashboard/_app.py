"""Assemble the dashboard's ASGI application from its page modules, and serve it with Hypercorn on Trio."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from pgflow_trio._client._engine import Engine
from pgflow_trio._dashboard import _actions, _live, _ops_pages, _run_pages
from pgflow_trio._dashboard._config import AuthHook, DashboardConfig
from pgflow_trio._dashboard._state import Dashboard


def create_app(
    engine: Engine,
    *,
    read_only: bool = False,
    token: str | None = None,
    auth: AuthHook | None = None,
    refresh_seconds: float = 5.0,
    title: str = "pgflow_trio",
) -> Starlette:
    """The dashboard as an ASGI application over `engine`, to mount in a Trio-hosted ASGI server (Hypercorn).

    `token` (a shared secret) or `auth` (a callable deciding per request) protect it; `read_only` hides and refuses
    every action. Live updates need the engine's events (EngineOptions.events, on by default); without them pages
    refresh every `refresh_seconds`."""
    config = DashboardConfig(read_only=read_only, token=token, auth=auth, refresh_seconds=refresh_seconds, title=title)
    dash = Dashboard(engine, config)
    routes: list[BaseRoute] = [
        *_ops_pages.routes(dash),
        *_run_pages.routes(dash),
        *_live.routes(dash),
        *_actions.routes(dash),
        Mount("/static", StaticFiles(packages=[("pgflow_trio._dashboard", "static")]), name="static"),
    ]
    return Starlette(routes=routes, middleware=dash.security.middleware())


async def serve_dashboard(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    read_only: bool = False,
    token: str | None = None,
    no_auth: bool = False,
) -> None:
    """Serve the dashboard until cancelled. Skeleton: completed with the security rules."""
    raise NotImplementedError
