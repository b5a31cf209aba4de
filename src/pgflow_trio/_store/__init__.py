"""The store: the only code that runs SQL or touches a database driver. asyncpg behind a driver seam (trio-asyncio,
or asyncio in a thread of its own), pools, transactions, LISTEN, error mapping that keeps SQLSTATE, every statement
the product runs, and the schema installer.

May import `_definitions` and the layers below it; nothing above it imports asyncpg or trio_asyncio.
"""

from pgflow_trio._store._database import (
    Connection,
    Database,
    DedicatedSession,
    RawConnection,
    Record,
    open_database,
)
from pgflow_trio._store._driver import DriverChoice
from pgflow_trio._store._listen import Listener, MissedNotifications, Notification, open_listener

__all__ = [
    "Connection",
    "Database",
    "DedicatedSession",
    "DriverChoice",
    "Listener",
    "MissedNotifications",
    "Notification",
    "RawConnection",
    "Record",
    "open_database",
    "open_listener",
]
