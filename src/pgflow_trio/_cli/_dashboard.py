"""`python -m pgflow_trio dashboard`: serve the live dashboard (extra `dashboard`).

Serves until SIGINT or SIGTERM, then shuts down cleanly. Binding beyond loopback needs --token (or
$PGFLOW_DASHBOARD_TOKEN) unless --no-auth is given explicitly (it wins over the variable). Without a token, only
requests addressed to localhost, 127.x, [::1] or an --allowed-host are answered.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import trio

from pgflow_trio._cli._demo import until_signalled

TOKEN_ENV = "PGFLOW_DASHBOARD_TOKEN"
MISSING_EXTRA = (
    "error: the dashboard needs the `dashboard` extra (Starlette, Jinja2, Hypercorn): "
    "pip install 'pgflow-trio[dashboard]'"
)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: any free port), got {value}")
    return value


def add_dashboard_parser(commands: Any, add_database_options: Callable[[argparse.ArgumentParser], None]) -> None:
    dashboard = commands.add_parser("dashboard", help="serve the live dashboard in a browser (extra `dashboard`)")
    add_database_options(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1)")
    dashboard.add_argument("--port", type=port_number, default=8080, help="the port (default 8080; 0: any free port)")
    auth = dashboard.add_mutually_exclusive_group()
    auth.add_argument("--token", help=f"the shared secret a browser must give once (default: ${TOKEN_ENV})")
    auth.add_argument(
        "--no-auth",
        action="store_true",
        help=f"serve beyond loopback without a token (access protected otherwise); ignores ${TOKEN_ENV}",
    )
    dashboard.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a host name the dashboard answers for besides localhost/127.x/[::1] (any port), e.g. behind a reverse "
        "proxy or with --no-auth; repeatable; * allows any",
    )
    dashboard.add_argument("--read-only", action="store_true", help="hide and refuse every action")


def missing_extra() -> bool:
    """Whether the `dashboard` extra is missing (then the reason is printed)."""
    try:
        import pgflow_trio._dashboard  # noqa: F401
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return True
    return False


def dashboard_token(args: argparse.Namespace) -> str | None:
    """--token, else $PGFLOW_DASHBOARD_TOKEN unless --no-auth says explicitly to serve without one."""
    if args.token is not None:
        return str(args.token)
    if args.no_auth:
        return None
    return os.environ.get(TOKEN_ENV) or None


async def run_dashboard(args: argparse.Namespace) -> int:
    try:
        from pgflow_trio._dashboard import serve_dashboard
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from pgflow_trio._client._engine import open_engine
    from pgflow_trio._dashboard._security import check_binding, checked_allowed_hosts

    token = dashboard_token(args)
    check_binding(args.host, token=token, no_auth=args.no_auth)  # ConfigurationError: exit code 2 with the reason
    allowed_hosts = checked_allowed_hosts(args.allowed_host)
    options: dict[str, Any] = {"data_dir": args.data_dir}
    if getattr(args, "connect_timeout", None) is not None:
        options["connect_timeout"] = args.connect_timeout
    async with open_engine(args.dsn, **options) as engine, trio.open_nursery() as nursery:
        serve = functools.partial(
            serve_dashboard,
            engine,
            host=args.host,
            port=args.port,
            token=token,
            no_auth=args.no_auth,
            allowed_hosts=allowed_hosts,
            read_only=args.read_only,
        )
        url = await nursery.start(serve)
        print(f"dashboard at {url}", flush=True)
        await until_signalled()
        nursery.cancel_scope.cancel()
    return 0
