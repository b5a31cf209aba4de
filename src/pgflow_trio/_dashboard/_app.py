"""Assemble the dashboard's ASGI application from its page modules, and serve it with Hypercorn on Trio."""

from __future__ import annotations

import logging

import hypercorn.config
import hypercorn.trio
import trio
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from pgflow_trio._client._engine import Engine
from pgflow_trio._dashboard import _actions, _live, _ops_pages, _run_pages
from pgflow_trio._dashboard._config import AuthHook, DashboardConfig
from pgflow_trio._dashboard._security import check_binding, checked_allowed_hosts, with_headers
from pgflow_trio._dashboard._state import Dashboard
from pgflow_trio._exceptions import ConfigurationError
from pgflow_trio._util import single_leaf


class _DashboardApp(Starlette):
    """Starlette with the security headers outside its error handling, so a 500 page carries them as well."""

    def build_middleware_stack(self) -> ASGIApp:
        return with_headers(super().build_middleware_stack())


def create_app(
    engine: Engine,
    *,
    read_only: bool = False,
    token: str | None = None,
    auth: AuthHook | None = None,
    allowed_hosts: tuple[str, ...] | list[str] = (),
    refresh_seconds: float = 5.0,
    title: str = "pgflow_trio",
) -> Starlette:
    """The dashboard as an ASGI application over `engine`, to mount in a Trio-hosted ASGI server (Hypercorn).

    `token` (a shared secret) or `auth` (a callable deciding per request) protect it; `read_only` hides and refuses
    every action. Without either, only requests addressed to localhost, 127.x or [::1] are answered (421 otherwise,
    against DNS rebinding); `allowed_hosts` names the other hosts it answers for (behind a reverse proxy, or on a
    public address with no_auth; `*`: any). Live updates need the engine's events (EngineOptions.events, on by
    default); without them pages refresh every `refresh_seconds`."""
    config = DashboardConfig(
        read_only=read_only,
        token=token,
        auth=auth,
        allowed_hosts=checked_allowed_hosts(allowed_hosts),
        refresh_seconds=refresh_seconds,
        title=title,
    )
    dash = Dashboard(engine, config)
    routes: list[BaseRoute] = [
        *_ops_pages.routes(dash),
        *_run_pages.routes(dash),
        *_live.routes(dash),
        *_actions.routes(dash),
        Mount("/static", StaticFiles(packages=[("pgflow_trio._dashboard", "static")]), name="static"),
    ]
    dash.templates.env.globals["verified_notice"] = dash.security.notice_of  # base.html shows only signed notices
    app = _DashboardApp(routes=routes, middleware=dash.security.middleware())
    app.state.dashboard = dash
    return app


async def serve_dashboard(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    read_only: bool = False,
    token: str | None = None,
    auth: AuthHook | None = None,
    no_auth: bool = False,
    allowed_hosts: tuple[str, ...] | list[str] = (),
    refresh_seconds: float = 5.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard with Hypercorn until cancelled (open pages and event streams end with it).

    `task_status.started(url)` gives its address (the real port when `port=0`). Binding beyond loopback needs
    `token` or `auth`, or an explicit `no_auth=True`, else ConfigurationError; so does an address it cannot listen
    on (a port in use). Unprotected, it answers only requests addressed to loopback names and `allowed_hosts`."""
    check_binding(host, token=token, auth=auth, no_auth=no_auth)
    app = create_app(
        engine,
        read_only=read_only,
        token=token,
        auth=auth,
        allowed_hosts=allowed_hosts,
        refresh_seconds=refresh_seconds,
    )
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("pgflow_trio.dashboard")  # errors of pages are logged, not lost

    async def serve(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await hypercorn.trio.serve(app, config, task_status=task_status)  # type: ignore[arg-type]

    refused: OSError | None = None
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(serve)
        except (OSError, BaseExceptionGroup) as exc:
            refused = _os_error(exc)
            if refused is None:
                raise
        else:
            task_status.started(binds[0].rstrip("/") + "/")
    if refused is not None:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {refused.strerror or refused}") from None


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError a failed bind raised (Hypercorn may wrap it in exception groups), else None."""
    leaf = single_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
    return leaf if isinstance(leaf, OSError) else None
