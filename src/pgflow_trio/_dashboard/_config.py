"""How a dashboard behaves: who may see it, whether it may act, how it refreshes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from starlette.requests import Request

AuthHook = Callable[[Request], "bool | Awaitable[bool]"]
"""Decides whether a request may see the dashboard (True) or gets 401; may be async."""


@attrs.frozen
class DashboardConfig:
    """How a dashboard behaves. `token` or `auth` protect it; `read_only` hides and refuses every action."""

    read_only: bool = False
    token: str | None = None
    auth: AuthHook | None = None
    allowed_hosts: tuple[str, ...] = ()
    """Host names (any port) the dashboard answers besides localhost, 127.x and [::1]. Without a token or auth hook
    only those are served, which defeats DNS rebinding; `*` allows any host."""
    refresh_seconds: float = 5.0
    """How often a page refreshes itself when live events are off or the event stream is down."""
    live_interval: float = 0.25
    """Changes are coalesced per browser and sent at most this often."""
    json_cap: int = 64 * 1024
    """Characters of a JSON value shown inline; the whole value is behind a download link."""
    title: str = "pgflow_trio"
