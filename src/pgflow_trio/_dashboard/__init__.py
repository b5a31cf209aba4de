"""The live operator dashboard: an ASGI application (Starlette, Jinja2 templates) over an engine, and a Hypercorn
server for it. Pages read through the store; live updates ride on the engine's one event listener."""

from pgflow_trio._dashboard._app import create_app, serve_dashboard
from pgflow_trio._dashboard._config import AuthHook, DashboardConfig

__all__ = ["AuthHook", "DashboardConfig", "create_app", "serve_dashboard"]
