"""Who may see the dashboard and how actions are protected: token or auth hook, CSRF tokens, security headers.

Skeleton: every request is allowed and the CSRF token is empty until this module is complete."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from pgflow_trio._dashboard._config import DashboardConfig


class Security:
    def __init__(self, config: DashboardConfig) -> None:
        self.config = config

    def csrf_token(self, request: Request) -> str:
        """The token a form of this page must send back with its POST."""
        return ""

    def finish(self, request: Request, response: Response) -> None:
        """Set what a rendered page needs on its response (cookies)."""

    def middleware(self) -> list[Middleware]:
        """The application's middleware: authentication, CSRF checks, security headers."""
        return []
