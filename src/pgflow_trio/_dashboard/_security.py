"""Who may see the dashboard and how actions are protected: token or auth hook, CSRF tokens, security headers.

- Authentication: a shared token (`Authorization: Bearer <token>`, or `?token=<token>` once, which sets an HttpOnly
  SameSite=Strict cookie and redirects to the same URL without it), or an auth hook deciding per request.
- CSRF: a signed double-submit token. The browser holds a random id in an HttpOnly cookie; forms carry
  HMAC(app secret, id). Every POST must send it back (form field `csrf_token` or header `X-CSRF-Token`).
- Host check: without a token or auth hook, only requests for localhost, 127.x or [::1] (or an allowed host) are
  answered (421 otherwise), so a DNS-rebinding page cannot read or operate the dashboard. POSTs must also come from
  the dashboard's own origin (`Sec-Fetch-Site`, else `Origin`, when the browser sends them).
- Headers on every response, error pages included: a Content-Security-Policy without inline scripts or styles,
  nosniff, same-origin referrers.
- An auth hook that raises is logged and the request gets a 500 page: a broken hook never lets anyone in.
- Notices (`?notice=` after an action) are shown only with the dashboard's own signature (`notice_sig`).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
import logging
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Any, cast

import jinja2
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgflow_trio._exceptions import ConfigurationError

if TYPE_CHECKING:
    from pgflow_trio._dashboard._config import DashboardConfig

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
SESSION_COOKIE = "pgflow_dashboard_session"
CSRF_COOKIE = "pgflow_dashboard_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_FORM_BYTES = 64 * 1024
"""Dashboard forms are a few hidden fields; a bigger POST body is refused."""
NOTICE_PARAM = "notice"
NOTICE_SIG_PARAM = "notice_sig"

log = logging.getLogger("pgflow_trio.dashboard")


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host name of a Host header (or of an Origin's netloc), lower case, without port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def checked_allowed_hosts(hosts: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The allowed host names, normalised; ConfigurationError for one that is not a bare host name."""
    checked: list[str] = []
    for host in hosts:
        name = host.strip().lower().strip("[]")
        if not name or any(c in name for c in "/\\@?# \t") or (name.count(":") == 1):
            raise ConfigurationError(
                f"allowed host {host!r} is not a host name: give a name or address without scheme, port or path "
                "(e.g. dash.example.com), or * for any host"
            )
        checked.append(name)
    return tuple(checked)


def check_binding(host: str, *, token: str | None, auth: object | None = None, no_auth: bool = False) -> None:
    """Refuse to serve the dashboard beyond this machine without protection: ConfigurationError unless the host is
    a loopback address, a token or auth hook is given, or `no_auth` says so explicitly."""
    if token is not None and not token:
        raise ConfigurationError("the dashboard token is empty: give a non-empty --token, or leave it out")
    if token and no_auth:
        raise ConfigurationError("token and no_auth contradict each other: give one of them")
    if is_loopback(host) or token or auth is not None or no_auth:
        return
    raise ConfigurationError(
        f"refusing to serve the dashboard on {host} without authentication: anyone who can reach it could see and "
        "operate your runs. Give --token T (or token=/auth= in code), or --no-auth if access is protected otherwise"
    )


def host_allowed(config: DashboardConfig, host: str) -> bool:
    """Whether a request whose Host header names `host` is answered: loopback names always, the allowed hosts, and
    any host when a token or auth hook protects the dashboard and no allowed hosts are set."""
    name = host_of(host)
    if name == "localhost" or is_loopback(name):
        return True
    if config.allowed_hosts:
        return "*" in config.allowed_hosts or name in config.allowed_hosts
    return bool(config.token) or config.auth is not None


def _denied_page(status: int, message: str) -> HTMLResponse:
    template = _denied_template()
    return HTMLResponse(template.render(status=status, message=message), status_code=status)


_TEMPLATES: list[jinja2.Template] = []


def _denied_template() -> jinja2.Template:
    if not _TEMPLATES:
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("pgflow_trio._dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        _TEMPLATES.append(env.get_template("denied.html"))
    return _TEMPLATES[0]


class Security:
    """The dashboard's security rules, with a secret of its own (CSRF tokens do not survive a restart)."""

    def __init__(self, config: DashboardConfig, secret: bytes | None = None) -> None:
        self.config = config
        self.secret = secret or secrets.token_bytes(32)

    # ---- CSRF ---------------------------------------------------------------------------------------------
    def token_for(self, browser_id: str) -> str:
        """The CSRF token of the browser whose CSRF cookie holds `browser_id`."""
        return hmac.new(self.secret, browser_id.encode(), hashlib.sha256).hexdigest()

    def _browser_id(self, request: Request) -> str:
        """The browser's CSRF id: its cookie, or a new one (set on the response by `finish`)."""
        known = request.cookies.get(CSRF_COOKIE)
        if known and len(known) <= 128:
            return known
        fresh = getattr(request.state, "csrf_new_id", None)
        if fresh is None:
            fresh = secrets.token_urlsafe(24)
            request.state.csrf_new_id = fresh
        return str(fresh)

    def csrf_token(self, request: Request) -> str:
        """The token a form of this page must send back with its POST."""
        return self.token_for(self._browser_id(request))

    def csrf_valid(self, cookies: dict[str, str], token: str | None) -> bool:
        """Whether `token` belongs to the browser holding these cookies (constant time)."""
        browser_id = cookies.get(CSRF_COOKIE)
        if not browser_id or not token:
            return False
        return hmac.compare_digest(self.token_for(browser_id).encode(), token.encode())

    def finish(self, request: Request, response: Response) -> None:
        """Set what a rendered page needs on its response: the CSRF cookie for a browser that had none."""
        fresh = getattr(request.state, "csrf_new_id", None)
        if fresh is not None:
            response.set_cookie(
                CSRF_COOKIE,
                str(fresh),
                path=_cookie_path(request.scope),
                httponly=True,
                samesite="strict",
                secure=_is_https(request.scope),
            )

    # ---- notices ------------------------------------------------------------------------------------------
    def _notice_signature(self, notice: str) -> str:
        return hmac.new(self.secret, b"notice\x00" + notice.encode(), hashlib.sha256).hexdigest()

    def notice_query(self, notice: str) -> str:
        """The query string that shows `notice` on the page it is added to (signed: only ours are shown)."""
        return urllib.parse.urlencode({NOTICE_PARAM: notice, NOTICE_SIG_PARAM: self._notice_signature(notice)})

    def notice_of(self, request: Request) -> str | None:
        """The notice the address carries, if the dashboard signed it (anything else is ignored)."""
        notice = request.query_params.get(NOTICE_PARAM)
        signature = request.query_params.get(NOTICE_SIG_PARAM, "")
        if not notice or not hmac.compare_digest(self._notice_signature(notice).encode(), signature.encode()):
            return None
        return notice

    # ---- authentication -----------------------------------------------------------------------------------
    def session_value(self) -> str:
        """What the session cookie holds once the token was given: derived from the token, never the token."""
        assert self.config.token
        return hmac.new(self.config.token.encode(), b"pgflow_trio dashboard session", hashlib.sha256).hexdigest()

    def middleware(self) -> list[Middleware]:
        """The application's middleware, outermost first: host check, authentication, CSRF checks. The security
        headers wrap the whole application instead (`with_headers`), so that error pages carry them too."""
        return [
            Middleware(_HostMiddleware, security=self),
            Middleware(_AuthMiddleware, security=self),
            Middleware(_CsrfMiddleware, security=self),
        ]


def _cookie_path(scope: Scope) -> str:
    return str(scope.get("root_path", "")).rstrip("/") or "/"


def _is_https(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def with_headers(app: ASGIApp) -> ASGIApp:
    """`app` with the security headers added to every response it sends, its error pages included."""
    return _HeadersMiddleware(app)


class _HeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in HEADERS if n not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _HostMiddleware:
    """421 for a Host the dashboard does not serve (see `host_allowed`): a DNS-rebinding page sends its own name."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Request(scope).headers.get("host", "")
            if not host_allowed(self.security.config, host):
                message = (
                    "This dashboard does not answer for this host name. Open it as localhost or 127.0.0.1, or "
                    "start it with a token, an auth hook or --allowed-host."
                )
                await _denied_page(421, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _AuthMiddleware:
    """401 unless the request carries the token (bearer, session cookie, or `?token=` once) or the hook agrees."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = self.security.config
        if scope["type"] != "http" or (config.token is None and config.auth is None) or _is_static(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = await self._decide(request)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def _decide(self, request: Request) -> Response | None:
        """None to let the request through, else the response to send instead."""
        token = self.security.config.token
        if token:
            expected = token.encode()
            given = request.query_params.get("token")
            if given is not None:
                if not hmac.compare_digest(given.encode(), expected):
                    return _denied_page(401, "The token in the address is wrong.")
                return self._login_redirect(request)
            bearer = request.headers.get("authorization", "")
            scheme, _, credentials = bearer.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), expected):
                return None
            session = request.cookies.get(SESSION_COOKIE, "")
            if hmac.compare_digest(session.encode(), self.security.session_value().encode()):
                return None
        hook = self.security.config.auth
        if hook is not None:
            try:
                verdict = hook(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:
                log.exception("the dashboard's auth hook raised: request denied")
                return _denied_page(500, "The dashboard's auth hook failed: the error is in the server's log.")
            if verdict is True:
                return None
        return _denied_page(
            401, "This dashboard needs a token: open it once with ?token=<token>, or send Authorization: Bearer."
        )

    def _login_redirect(self, request: Request) -> Response:
        """Set the session cookie and send the browser to the same address without the token in it."""
        query = urllib.parse.urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        location = local_path(request.scope) + (f"?{query}" if query else "")
        response = RedirectResponse(location, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.security.session_value(),
            path=_cookie_path(request.scope),
            httponly=True,
            samesite="strict",
            secure=_is_https(request.scope),
        )
        return response


def local_path(scope: Scope) -> str:
    """The request's path as a same-site address: the app's root path, then the path with its leading slashes and
    backslashes collapsed into one slash (`//evil.example` or `/\\evil.example` must not leave the dashboard),
    percent-encoded."""
    root = str(scope.get("root_path", "")).rstrip("/")
    path = str(scope.get("path", "")).removeprefix(root)
    return root + "/" + urllib.parse.quote(path.lstrip("/\\"), safe="/!$&'()*+,;=:@-._~")


def _is_static(scope: Scope) -> bool:
    root = str(scope.get("root_path", "")).rstrip("/")
    path = str(scope.get("path", ""))
    return path.removeprefix(root).startswith("/static/")


class _CsrfMiddleware:
    """Every POST must carry the browser's CSRF token (form field or header), else 403. The body is read here and
    handed on unchanged to the application."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not same_origin(request):
            await _denied_page(403, "This form was sent from another site: open the dashboard itself and retry.")(
                scope, receive, send
            )
            return
        body = await _read_body(receive)
        if body is None:
            await _denied_page(413, "The form is too large.")(scope, receive, send)
            return
        token = request.headers.get(CSRF_HEADER) or _form_field(request, body, CSRF_FIELD)
        if not self.security.csrf_valid(dict(request.cookies), token):
            message = "The form's security token is missing or out of date: go back, reload the page and try again."
            await _denied_page(403, message)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def same_origin(request: Request) -> bool:
    """Whether a POST comes from the dashboard's own pages, as far as the browser says: `Sec-Fetch-Site` must be
    `same-origin`, else an `Origin` header must name the request's own host. Clients that send neither (scripts)
    are judged by the CSRF token alone."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None:
        return True
    netloc = urllib.parse.urlsplit(origin).netloc
    return bool(netloc) and netloc.lower() == request.headers.get("host", "").lower()


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _form_field(request: Request, body: bytes, name: str) -> str | None:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    values = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).get(name)
    return values[0] if values else None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return cast(dict[str, Any], await receive())

    return replayed
