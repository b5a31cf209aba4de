"""Dashboard security against real PostgreSQL: token (bearer, one-time ?token= setting a cookie), auth hooks, CSRF
on every POST, security headers on every response, read-only mode, and refusing to bind beyond loopback unprotected."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
from starlette.requests import Request

from pgflow_trio import ConfigurationError, open_engine
from pgflow_trio._dashboard import create_app, serve_dashboard
from pgflow_trio._dashboard._security import CSP, CSRF_COOKIE, Security, check_binding
from pgflow_trio._dashboard._state import environment

TOKEN = "s3cret-token"


@asynccontextmanager
async def client_for(dsn: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with open_engine(dsn) as engine:
        app = create_app(engine, **options)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            SECURITY[client] = app.state.dashboard.security
            yield client


SECURITY: dict[httpx.AsyncClient, Security] = {}


async def csrf_of(client: httpx.AsyncClient, path: str = "/runs", **kwargs: Any) -> str:
    """The CSRF token the pages of `client`'s browser carry (opening a page sets its CSRF cookie)."""
    page = await client.get(path, **kwargs)
    assert page.status_code == 200
    return SECURITY[client].token_for(client.cookies[CSRF_COOKIE])


def assert_secured(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "style-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"


async def test_every_response_carries_the_security_headers(dsn: str) -> None:
    with trio.fail_after(30):
        async with client_for(dsn, token=TOKEN) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            for response in (
                await client.get("/runs", headers=auth),
                await client.get("/no-such-page", headers=auth),
                await client.get("/static/dashboard.css"),
                await client.get("/runs"),  # 401
                await client.post("/actions/runs/cancel", headers=auth),  # 403
            ):
                assert_secured(response)


async def test_without_a_token_on_loopback_pages_are_open(dsn: str) -> None:
    with trio.fail_after(30):
        async with client_for(dsn) as client:
            assert (await client.get("/runs")).status_code == 200


async def test_a_token_is_needed_by_bearer_or_cookie(dsn: str) -> None:
    with trio.fail_after(30):
        async with client_for(dsn, token=TOKEN) as client:
            denied = await client.get("/runs")
            assert denied.status_code == 401
            assert "?token=" in denied.text
            assert (await client.get("/runs", headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await client.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
            assert (await client.get("/events", params={"topics": "runs"})).status_code == 401

            assert (await client.get("/runs", params={"token": "wrong"})).status_code == 401
            login = await client.get("/runs", params={"token": TOKEN, "status": "failed"})
            assert login.status_code == 303
            assert login.headers["location"] == "/runs?status=failed"
            cookie = login.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie
            assert TOKEN not in cookie
            # the client now holds the session cookie
            assert (await client.get("/runs")).status_code == 200
            client.cookies.clear()
            assert (await client.get("/runs")).status_code == 401


async def test_an_auth_hook_decides_per_request_sync_or_async(dsn: str) -> None:
    def sync_hook(request: Request) -> bool:
        return request.headers.get("x-user") == "ops"

    async def async_hook(request: Request) -> bool:
        await trio.lowlevel.checkpoint()
        return request.headers.get("x-user") == "ops"

    with trio.fail_after(30):
        for hook in (sync_hook, async_hook):
            async with client_for(dsn, auth=hook) as client:
                assert (await client.get("/runs")).status_code == 401
                assert (await client.get("/runs", headers={"x-user": "ops"})).status_code == 200


async def test_every_post_needs_this_browsers_csrf_token(dsn: str) -> None:
    with trio.fail_after(30):
        async with client_for(dsn) as client:
            page = await client.get("/runs")
            assert "pgflow_dashboard_csrf" in page.headers["set-cookie"]
            assert "HttpOnly" in page.headers["set-cookie"]
            fields = {"flow": "nope"}
            missing = await client.post("/actions/queues/pause", data=fields)
            assert missing.status_code == 403
            assert "security token" in missing.text
            wrong = await client.post("/actions/queues/pause", data={**fields, "csrf_token": "0" * 64})
            assert wrong.status_code == 403
            assert (await client.post("/anything", data={"csrf_token": "0" * 64})).status_code == 403

            # a token for another browser (another CSRF cookie) is refused
            foreign = SECURITY[client].token_for("another-browser")
            assert (
                await client.post("/actions/queues/pause", data={**fields, "csrf_token": foreign})
            ).status_code == 403

            token = await csrf_of(client)
            assert token == SECURITY[client].token_for(page.cookies[CSRF_COOKIE])
            ok = await client.post("/actions/queues/pause", data={**fields, "csrf_token": token})
            assert ok.status_code == 200  # the confirmation page
            header = await client.post("/actions/queues/pause", data=fields, headers={"X-CSRF-Token": token})
            assert header.status_code == 200


async def test_read_only_hides_and_refuses_actions(dsn: str) -> None:
    with trio.fail_after(30):
        async with client_for(dsn, read_only=True) as client:
            page = await client.get("/runs")
            assert "read-only" in page.text
            token = await csrf_of(client)
            refused = await client.post("/actions/queues/pause", data={"flow": "x", "csrf_token": token})
            assert refused.status_code == 403
            assert "read-only" in refused.text
    template = environment().from_string(
        '{% from "_macros.html" import action_button with context %}'
        '{{ action_button("runs/cancel", "Cancel", {"run_id": 1}) }}'
    )
    shown = template.render(read_only=False, root="/ops", csrf_token="abc")
    assert 'action="/ops/actions/runs/cancel"' in shown and 'value="abc"' in shown
    assert "<form" not in template.render(read_only=True, root="", csrf_token="abc")


def test_binding_beyond_loopback_needs_protection() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_binding(host, token=None)
    with pytest.raises(ConfigurationError, match=r"without authentication.*--token"):
        check_binding("0.0.0.0", token=None)
    check_binding("0.0.0.0", token=TOKEN)
    check_binding("0.0.0.0", token=None, auth=lambda request: True)
    check_binding("0.0.0.0", token=None, no_auth=True)
    with pytest.raises(ConfigurationError, match="empty"):
        check_binding("0.0.0.0", token="")
    with pytest.raises(ConfigurationError, match="contradict"):
        check_binding("0.0.0.0", token=TOKEN, no_auth=True)


async def test_serve_dashboard_refuses_an_unprotected_public_binding(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn, events=False) as engine, trio.open_nursery() as nursery:
            with pytest.raises(ConfigurationError, match="without authentication"):
                await nursery.start(functools.partial(serve_dashboard, engine, host="0.0.0.0", port=0))
            url = await nursery.start(functools.partial(serve_dashboard, engine, port=0, token=TOKEN))
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}runs")).status_code == 401
                page = await client.get(f"{url}runs", headers={"Authorization": f"Bearer {TOKEN}"})
            assert page.status_code == 200
            assert_secured(page)
            nursery.cancel_scope.cancel()
