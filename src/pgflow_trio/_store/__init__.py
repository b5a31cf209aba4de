"""Database access from Trio: pool, transactions, LISTEN, error mapping."""

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
