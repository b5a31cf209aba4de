"""Live updates: Server-Sent Events fed by the engine's one event listener.

`GET /events?topics=runs run:<id> flow:<slug>` streams, per browser, at most one `change` message per
`live_interval` naming the topics that changed (the page then re-fetches its fragment), a comment every
HEARTBEAT seconds so proxies keep it open, and `off` when the engine has no live events or its event listener ends
(the page then refreshes on a timer). No query is made per event: the browser re-reads only the page whose topic
changed. `HEAD /events` answers the headers only.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from pgflow_trio._client._events import Change, Resync
from pgflow_trio._dashboard._state import Dashboard

HEARTBEAT = 15.0
OFF_RETRY_MS = 30_000
"""When events are off, the browser tries the stream again this much later (refreshing on its timer meanwhile)."""
MAX_TOPICS = 20

Feed = AbstractAsyncContextManager[trio.MemoryReceiveChannel[Change | Resync]]


def parse_topics(raw: str) -> frozenset[str]:
    """The page's topics: `runs`, `run:<uuid>`, `flow:<slug>`; anything else is ignored."""
    topics: set[str] = set()
    for topic in raw.replace(",", " ").split()[:MAX_TOPICS]:
        kind, _, value = topic.partition(":")
        if topic == "runs" or (kind == "flow" and value):
            topics.add(topic)
        elif kind == "run":
            try:
                topics.add(f"run:{uuid.UUID(value)}")
            except ValueError:
                continue
    return frozenset(topics)


def changed_topics(item: Change | Resync, topics: frozenset[str]) -> set[str]:
    """Which of the page's topics `item` touches. A resync (missed events) touches them all, and so does a change
    whose flow is unknown for a `flow:` topic (refreshing too often beats showing stale state)."""
    if isinstance(item, Resync):
        return set(topics)
    hit = {t for t in topics if t == "runs" or t == f"run:{item.run_id}"}
    hit |= {t for t in topics if t.startswith("flow:") and item.flow_slug in (None, t[5:])}
    return hit


OFF_REASON = "the engine has no live events"


def message(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def off_message() -> str:
    """What tells the browser to refresh on its timer, and to try the stream again only much later."""
    return f"retry: {OFF_RETRY_MS}\n" + message("off", {"live": False, "reason": OFF_REASON})


async def stream_changes(
    changes: trio.MemoryReceiveChannel[Change | Resync], topics: frozenset[str], interval: float
) -> AsyncGenerator[str, None]:
    """SSE text: `hello` at once, then one `change` per burst of matching events, at most one per `interval`; `off`
    and the end when the engine's events end (the hub closes its subscribers)."""
    yield message("hello", {"live": True})
    last_sent = -math.inf
    while True:
        changed: set[str] = set()
        try:
            with trio.move_on_after(HEARTBEAT):
                while not changed:
                    changed |= changed_topics(await changes.receive(), topics)
        except trio.EndOfChannel:
            yield off_message()
            return
        if not changed:
            yield ": heartbeat\n\n"
            continue
        await trio.sleep_until(max(trio.current_time(), last_sent + interval))
        while True:
            try:
                changed |= changed_topics(changes.receive_nowait(), topics)
            except (trio.WouldBlock, trio.EndOfChannel):  # at the end, the next receive says `off`
                break
        yield message("change", sorted(changed))
        last_sent = trio.current_time()


class _ChangeStream(StreamingResponse):
    """The SSE response of one browser: subscribed for exactly as long as it streams, ending at once when the
    browser goes away (whatever the ASGI server's spec version) or the server is cancelled."""

    def __init__(self, dash: Dashboard, feed: Feed, topics: frozenset[str], headers: dict[str, str]) -> None:
        super().__init__(_nothing(), media_type="text/event-stream", headers=headers)
        self.dash = dash
        self.feed = feed
        self.topics = topics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async with self.feed as changes, trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when_gone, receive, nursery.cancel_scope)
            body = stream_changes(changes, self.topics, self.dash.config.live_interval)
            try:
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                nursery.cancel_scope.cancel()  # the events ended (said `off`): stop waiting for the browser
            finally:
                with trio.CancelScope(shield=True):
                    await body.aclose()


async def _nothing() -> AsyncIterator[str]:
    return
    yield  # an empty async generator: _ChangeStream sends its own body


async def _cancel_when_gone(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _events_off() -> AsyncIterator[str]:
    yield off_message()


def routes(dash: Dashboard) -> list[BaseRoute]:
    async def events(request: Request) -> Response:
        topics = parse_topics(request.query_params.get("topics", ""))
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":
            return Response(media_type="text/event-stream", headers=headers)
        feed = dash.engine.changes()
        if feed is None:
            return StreamingResponse(_events_off(), media_type="text/event-stream", headers=headers)
        return _ChangeStream(dash, feed, topics, headers)

    return [Route("/events", events)]
