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
from starlette.responses import Response
from starlette.routing import Route

from pgflow_trio import ConfigurationError, open_engine
from pgflow_trio._dashboard import create_app, serve_dashboard
from pgflow_trio._dashboard._security import CSP, CSRF_COOKIE, Security, check_binding, checked_allowed_hosts
from pgflow_trio._dashboard._state import environment

TOKEN = "s3cret-token"


@asynccontextmanager
async def client_for(dsn: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with open_engine(dsn) as engine:
        app = create_app(engine, **options)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
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
            fields = {"older_than": "7d"}
            missing = await client.post("/actions/runs/prune", data=fields)
            assert missing.status_code == 403
            assert "security token" in missing.text
            wrong = await client.post("/actions/runs/prune", data={**fields, "csrf_token": "0" * 64})
            assert wrong.status_code == 403
            assert (await client.post("/anything", data={"csrf_token": "0" * 64})).status_code == 403

            # a token for another browser (another CSRF cookie) is refused
            foreign = SECURITY[client].token_for("another-browser")
            assert (await client.post("/actions/runs/prune", data={**fields, "csrf_token": foreign})).status_code == 403

            token = await csrf_of(client)
            assert token == SECURITY[client].token_for(page.cookies[CSRF_COOKIE])
            ok = await client.post("/actions/runs/prune", data={**fields, "csrf_token": token})
            assert ok.status_code == 200  # the confirmation page
            header = await client.post("/actions/runs/prune", data=fields, headers={"X-CSRF-Token": token})
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


async def asgi_get(
    app: Any, path: str, query: bytes = b"", host: bytes = b"localhost"
) -> tuple[int, dict[bytes, bytes]]:
    """One GET straight through ASGI with the raw path (an HTTP client would resolve `//host/...` itself)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", host)],
        "client": ("127.0.0.1", 1),
        "server": ("localhost", 80),
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"])


async def test_without_protection_only_loopback_host_names_are_answered(dsn: str) -> None:
    """DNS rebinding: a page of evil.example re-resolved to 127.0.0.1 sends `Host: evil.example`."""
    with trio.fail_after(30):
        async with client_for(dsn) as client:
            for host in ("localhost", "localhost:8080", "127.0.0.1:9", "127.3.2.1", "[::1]:8080", "LOCALHOST"):
                assert (await client.get("/runs", headers={"host": host})).status_code == 200, host
            for host in ("evil.example", "evil.example:8080", "10.0.0.1", "localhost.evil.example", ""):
                refused = await client.get("/runs", headers={"host": host})
                assert refused.status_code == 421, host
                assert "--allowed-host" in refused.text
                assert_secured(refused)
            assert (await client.get("/events", headers={"host": "evil.example"})).status_code == 421
        async with client_for(dsn, allowed_hosts=["Dash.Example"]) as client:
            assert (await client.get("/runs", headers={"host": "dash.example:443"})).status_code == 200
            assert (await client.get("/runs", headers={"host": "localhost"})).status_code == 200
            assert (await client.get("/runs", headers={"host": "evil.example"})).status_code == 421
        async with client_for(dsn, allowed_hosts=["*"]) as client:
            assert (await client.get("/runs", headers={"host": "anything.example"})).status_code == 200
        async with client_for(dsn, token=TOKEN) as client:  # protected: any host, unless allowed_hosts narrow it
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert (await client.get("/runs", headers={**auth, "host": "dash.example"})).status_code == 200
        async with client_for(dsn, token=TOKEN, allowed_hosts=["dash.example"]) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert (await client.get("/runs", headers={**auth, "host": "dash.example"})).status_code == 200
            assert (await client.get("/runs", headers={**auth, "host": "other.example"})).status_code == 421
    for bad in ("http://dash.example", "dash.example:8080", "dash.example/x", ""):
        with pytest.raises(ConfigurationError, match="not a host name"):
            checked_allowed_hosts([bad])


async def test_a_post_from_another_site_is_refused_even_with_a_token(dsn: str) -> None:
    with trio.fail_after(30):
        async with client_for(dsn) as client:
            token = await csrf_of(client)
            fields = {"older_than": "7d", "csrf_token": token}
            for headers in (
                {"sec-fetch-site": "cross-site"},
                {"sec-fetch-site": "same-site"},
                {"origin": "http://evil.example"},
                {"origin": "null"},
            ):
                refused = await client.post("/actions/runs/prune", data=fields, headers=headers)
                assert refused.status_code == 403, headers
                assert "another site" in refused.text
            for headers in ({"sec-fetch-site": "same-origin"}, {"origin": "http://localhost"}, {}):
                assert (await client.post("/actions/runs/prune", data=fields, headers=headers)).status_code == 200


async def test_the_login_redirect_stays_on_the_dashboard(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            app = create_app(engine, token=TOKEN)
            query = f"token={TOKEN}&a=1".encode()
            for path, location in (
                ("//evil.example/x", b"/evil.example/x?a=1"),
                ("/\\evil.example", b"/evil.example?a=1"),
                ("/\\/\\evil.example/", b"/evil.example/?a=1"),
                ("/runs\r\nSet-Cookie: x=1", b"/runs%0D%0ASet-Cookie:%20x=1?a=1"),
                ("/runs", b"/runs?a=1"),
            ):
                status, headers = await asgi_get(app, path, query)
                assert (status, headers[b"location"]) == (303, location), path


async def test_cookies_are_secure_over_https(dsn: str) -> None:
    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            app = create_app(engine, token=TOKEN)
            for scheme, secure in (("https", True), ("http", False)):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url=f"{scheme}://localhost") as client:
                    login = await client.get("/runs", params={"token": TOKEN})
                    page = await client.get("/runs")
                for response in (login, page):
                    cookie = response.headers["set-cookie"]
                    assert ("; secure" in cookie.lower()) is secure, cookie


async def test_error_pages_carry_the_security_headers_and_a_failing_hook_denies(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_hook(request: Request) -> bool:
        raise RuntimeError("the identity provider is down")

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    with trio.fail_after(30):
        async with open_engine(dsn) as engine:
            app = create_app(engine)
            app.router.routes.insert(0, Route("/boom", boom))
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                crashed = await client.get("/boom")
            assert crashed.status_code == 500
            assert_secured(crashed)

            app = create_app(engine, auth=broken_hook)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                denied = await client.get("/runs")
            assert denied.status_code == 500
            assert "auth hook failed" in denied.text
            assert_secured(denied)
            assert any("auth hook raised" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_only_the_dashboards_own_notices_show(dsn: str) -> None:
    with trio.fail_after(30):
        async with client_for(dsn) as client:
            forged = await client.get("/runs", params={"notice": "Your session expired: call +1 555 0100"})
            assert "555 0100" not in forged.text
            wrong = await client.get("/runs", params={"notice": "Queue x paused.", "notice_sig": "0" * 64})
            assert "Queue x paused." not in wrong.text
            signed = SECURITY[client].notice_query("Queue x paused.")
            assert "Queue x paused." in (await client.get(f"/runs?{signed}")).text
