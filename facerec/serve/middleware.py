"""ASGI middleware of the Ingress: a bound on request bodies in flight, the security headers
every response carries, and the Host names the server answers for.

:class:`UploadGate` decides from the request line and headers alone, before a byte of the body
is read: a declared ``Content-Length`` over the route's limit is a 413, a request that does not
fit in the replica's budget of body bytes in flight is a 503 with ``Retry-After``. Accepted
requests hold their reservation (the declared length, or the route's limit when the length is
not declared) until their response is sent, and a body that grows past what it declared or past
the limit is cut off with a 413 while it streams. So the bytes one Ingress replica holds for
uploads never exceed its budget, however many clients send at once: 32 concurrent 10 MB uploads
grew an unbounded Ingress from 257 MB to 1.6 GB.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Headers on every response. ``frame-ancestors 'none'`` is the CSP form of ``X-Frame-Options:
#: DENY`` (browsers that know CSP follow it); the rest of the policy allows only this origin,
#: plus ``blob:``/``data:`` images for the page's preview of the chosen photo.
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}

logger = logging.getLogger("ray.serve")

_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


class BodyTooLarge(HTTPException):
    """A body that grew past its limit while streaming. An HTTPException, so FastAPI's form
    parser passes it through (it turns other errors into "error parsing the body") and the
    app's handler answers it in the API's error shape."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit:,} bytes")
        self.limit = limit


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> tuple[dict, bytes]:
    """The start message and body of an error response in the API's shape (ErrorBody)."""
    body = json.dumps({"detail": message, "code": code}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http.response.start", "status": status, "headers": raw}, body


class GateRefusal(Exception):
    """Raised by a route's ``before_body`` check (e.g. a missing token): answered at once."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


@dataclass
class UploadBudget:
    """Per Ingress replica: ``total`` body bytes may be in flight at once; each route's bodies are
    limited to ``limits[path]`` bytes (``default_limit`` for other routes). ``before_body``:
    path -> a check of the headers run before the body is read (raise :class:`GateRefusal`)."""

    total: int
    limits: dict[str, int]
    default_limit: int
    before_body: dict[str, Callable[[Headers], None]] = field(default_factory=dict)
    retry_after_s: int = 1
    in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def limit_for(self, path: str) -> int:
        return min(self.limits.get(path, self.default_limit), self.total)

    def try_reserve(self, n: int) -> bool:
        with self._lock:
            if self.in_flight + n > self.total:
                return False
            self.in_flight += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.in_flight -= n


class UploadGate:
    """Pure ASGI middleware applying the :class:`UploadBudget` found at ``app.state.upload_budget``
    (set by the Ingress replica; without one, requests pass untouched)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budget: UploadBudget | None = getattr(getattr(scope.get("app"), "state", None), "upload_budget", None)
        if scope["type"] != "http" or budget is None or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        if not _routed(scope):
            # No route takes this method at this path: the app answers 404/405 without reading
            # the body, and no route's check (a token) may answer first.
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        headers = Headers(scope=scope)
        limit = budget.limit_for(path)

        async def refuse(status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
            start, body = json_error(status, code, message, extra)
            await send(start)
            await send({"type": "http.response.body", "body": body})

        check = budget.before_body.get(path)
        if check is not None:
            try:
                check(headers)
            except GateRefusal as r:
                await refuse(r.status, r.code, r.message, r.headers)
                return
        declared_raw = headers.get("content-length")
        declared: int | None = None
        if declared_raw is not None:
            try:
                declared = int(declared_raw)
                if declared < 0:
                    raise ValueError
            except ValueError:
                await refuse(400, "bad_request", f"Content-Length {declared_raw!r} is not a byte count")
                return
            if declared > limit:
                await refuse(413, "too_large", f"request body of {declared:,} bytes exceeds the limit of {limit:,} bytes"
                             + (" (the server's budget of upload bytes in flight)" if limit == budget.total else ""))
                return
        reserve = declared if declared is not None else limit
        if not budget.try_reserve(reserve):
            await refuse(503, "busy", f"the server is receiving too many uploads right now "
                                      f"({budget.total:,} bytes in flight at most); retry in {budget.retry_after_s}s",
                         {"Retry-After": str(budget.retry_after_s)})
            return
        cap = reserve  # a body may not outgrow what it declared (nor the limit when it declared nothing)
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise BodyTooLarge(cap)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await refuse(413, "too_large", str(exc.detail))
        finally:
            budget.release(reserve)


class SecurityHeaders:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` to every response (errors included)
    that does not set them itself. Outermost of the app's own middleware, it also answers an
    unexpected exception with a 500 in the API's error shape (logged with its traceback in the
    replica log) instead of Starlette's plain-text page."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] | None = None):
        self.app = app
        self.extra = [(k.lower().encode(), v.encode()) for k, v in (headers or SECURITY_HEADERS).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": list(message.get("headers", [])) + [h for h in self.extra if h[0] not in have]}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except ClientDisconnect:
            return  # the client went away mid-request: nobody to answer, nothing went wrong here
        except Exception as exc:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            start, body = json_error(500, "internal", f"internal error ({type(exc).__name__}); the replica log has the "
                                                      f"traceback")
            await with_headers(start)
            await with_headers({"type": "http.response.body", "body": body})


class HostCheck:
    """Pure ASGI middleware: a request whose ``Host`` header names no host of
    ``app.state.allowed_hosts`` (a list as :func:`facerec.serve.config.check_allowed_hosts` makes
    it; without one, requests pass) is answered 400 ``bad_host`` in the API's error shape. A
    browser sends the name it resolved, so a page of another site that re-points its own DNS name
    at this server (DNS rebinding) is refused here instead of reading the API as same-origin."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = getattr(getattr(scope.get("app"), "state", None), "allowed_hosts", None)
        if scope["type"] != "http" or not allowed or "*" in allowed:
            await self.app(scope, receive, send)
            return
        raw = Headers(scope=scope).get("host")
        host = host_name(raw)
        if host is not None and host_allowed(host, allowed):
            await self.app(scope, receive, send)
            return
        message = ("the request has no Host header" if raw is None else
                   f"this server does not answer for Host {raw[:100]!r}; if that is a name of this server, add it to "
                   f"its allowed hosts (facerec serve --allowed-host NAME, or allowed_hosts in the config)")
        start, body = json_error(400, "bad_host", message)
        await send(start)
        await send({"type": "http.response.body", "body": body})


def host_name(value: str | None) -> str | None:
    """The host of a ``Host`` header, lower case, without port or a final dot (``[::1]`` keeps its
    brackets); None when it is missing or malformed."""
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return value[:end + 1]
    name, _, port = value.partition(":")
    if ":" in port or (port and not port.isdigit()) or not name:
        return None
    return name[:-1] if name.endswith(".") else name


def host_allowed(host: str, allowed: list[str] | tuple[str, ...]) -> bool:
    """Whether ``host`` (from :func:`host_name`) is one of ``allowed``: equal to an entry, a
    sub-domain of a ``*.domain`` entry, or anything when ``*`` is one."""
    for a in allowed:
        if a == "*" or a == host or (a.startswith("*.") and host.endswith(a[1:]) and len(host) > len(a) - 1):
            return True
    return False


def proxy_middlewares() -> list[Middleware]:
    """The middlewares of Ray Serve's HTTP proxy, for ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
    (:data:`facerec.serve.runtime.SERVE_ENV`): Serve answers ``/-/routes``, ``/-/healthz`` and its
    own 404s in the proxy, before any application, so the app's :class:`SecurityHeaders` never sees
    them; this puts the same headers on those (the app's responses already carry them)."""
    return [Middleware(SecurityHeaders)]


def _routed(scope: Scope) -> bool:
    """Whether a route of the app (``scope["app"]``) takes this method at this path."""
    router = getattr(scope.get("app"), "router", None)
    if router is None:
        return True
    return any(route.matches(scope)[0] == Match.FULL for route in router.routes)


def _route_path(scope: Scope) -> str:
    """The path inside the application (an app mounted at ``/subset`` sees ``/v1/search``)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def describe(budget: UploadBudget) -> dict[str, Any]:
    return {"upload_bytes_in_flight": budget.in_flight, "upload_budget_bytes": budget.total}
