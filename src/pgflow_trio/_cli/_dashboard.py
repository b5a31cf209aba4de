"""`python -m pgflow_trio dashboard`: serve the live dashboard (extra `dashboard`).

Skeleton: the command exists; serving is written with the dashboard's security rules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_dashboard_parser(commands: Any, add_database_options: Callable[[argparse.ArgumentParser], None]) -> None:
    dashboard = commands.add_parser("dashboard", help="serve the live dashboard in a browser (extra `dashboard`)")
    add_database_options(dashboard)


async def run_dashboard(args: argparse.Namespace) -> int:
    raise NotImplementedError
