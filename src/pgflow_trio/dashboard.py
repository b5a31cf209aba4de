"""The live operator dashboard (extra `dashboard`): `create_app(engine)` is an ASGI application to mount in your
own Trio-hosted ASGI server; `serve_dashboard(engine)` serves it with Hypercorn; `python -m pgflow_trio dashboard`
does both on the command line.

    async with pgflow_trio.open_engine(dsn) as engine:
        app = create_app(engine, token="s3cret")
"""

from pgflow_trio._dashboard import AuthHook, DashboardConfig, create_app, serve_dashboard

__all__ = ["AuthHook", "DashboardConfig", "create_app", "serve_dashboard"]
