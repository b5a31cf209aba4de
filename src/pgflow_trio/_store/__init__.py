"""Database access from Trio: pool, transactions, LISTEN, error mapping."""

from pgflow_trio._store._database import Connection, Database, RawConnection, Record, open_database
from pgflow_trio._store._listen import Listener, MissedNotifications, Notification, open_listener

__all__ = [
    "Connection",
    "Database",
    "Listener",
    "MissedNotifications",
    "Notification",
    "RawConnection",
    "Record",
    "open_database",
    "open_listener",
]
