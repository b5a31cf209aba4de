"""Observability: lifecycle events (typed records handed to subscribers), and what is built on them.

This layer sits between the runtime/client (which emit events) and the store. It imports only the layers below it.
"""

from pgflow_trio._observe._events import (
    Event,
    Subscription,
    emit,
    subscribe,
    wanted,
)

__all__ = ["Event", "Subscription", "emit", "subscribe", "wanted"]
