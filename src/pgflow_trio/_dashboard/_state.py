"""What every page handler shares: the engine, the configuration, the templates, the security rules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from pgflow_trio._client._engine import Engine
from pgflow_trio._dashboard import _format
from pgflow_trio._dashboard._config import DashboardConfig
from pgflow_trio._dashboard._security import Security
from pgflow_trio._store import RawConnection

T = TypeVar("T")

NAV: tuple[tuple[str, str], ...] = (
    ("/", "Overview"),
    ("/flows", "Flows"),
    ("/jobs", "Jobs"),
    ("/runs", "Runs"),
    ("/workers", "Workers"),
    ("/queues", "Queues"),
    ("/schedules", "Schedules"),
)


def environment() -> jinja2.Environment:
    """The templates, autoescaped everywhere, failing on undefined names."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pgflow_trio._dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    _format.install(env)
    return env


class Dashboard:
    """The state page handlers share."""

    def __init__(self, engine: Engine, config: DashboardConfig) -> None:
        self.engine = engine
        self.config = config
        self.templates = Jinja2Templates(env=environment())
        self.security = Security(config)

    async def query(self, fn: Callable[[RawConnection], Awaitable[T]]) -> T:
        """Run one store function on a pooled connection."""
        return await self.engine.db.run(fn)

    def render(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        topics: str = "",
        refresh: float | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        """Render a page, or only its <main> when `?fragment=1` (the live refresh asks for that).

        `topics` (space-separated) say which live changes refresh the page: `runs` (any run or step event),
        `run:<run_id>`, `flow:<slug>`. `refresh` (seconds) refreshes it on a timer as well, for what sends no
        events (heartbeats, queue depth). Links in templates start with `{{ root }}` (where the app is mounted)."""
        full = {
            "fragment": request.query_params.get("fragment") == "1",
            "read_only": self.config.read_only,
            "csrf_token": self.security.csrf_token(request),
            "topics": topics,
            "refresh": refresh,
            "fallback_refresh": self.config.refresh_seconds,
            "nav": NAV,
            "root": request.scope.get("root_path", "").rstrip("/"),
            "path": request.url.path.removeprefix(request.scope.get("root_path", "").rstrip("/")) or "/",
            "title": self.config.title,
            **context,
        }
        response = self.templates.TemplateResponse(request, name, full, status_code=status_code)
        self.security.finish(request, response)
        return response
