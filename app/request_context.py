"""Every response carries a request id and security headers; log lines carry the id too."""

import itertools
import logging
import re
import secrets
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
# JSON answers need none of a browser's powers: no scripts, frames, or sniffed types.
API_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]
# The interactive docs load their script and styles, so they keep all but the CSP.
DOCS_SECURITY_HEADERS = API_SECURITY_HEADERS[:3]
DOCS_PATHS = ("/docs", "/redoc")
# The dashboard runs scripts, styles and event streams from this server only, nothing inline;
# its forms' POSTs must carry an Origin (the CSRF check), which `no-referrer` makes `null`.
DASHBOARD_SECURITY_HEADERS = [
    *API_SECURITY_HEADERS[:2],
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
]
DASHBOARD_PREFIX = "/ui/"

request_id: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` to every record: the current request's, or `-` outside one."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate, never drop."""
        record.request_id = request_id.get()
        return True


class RequestContextMiddleware:
    """Outermost ASGI layer: takes the caller's X-Request-ID (if sane) or makes one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # A random prefix per process and a counter: unique ids at a fraction of uuid4's
        # cost, which the predict fast path would feel.
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                rid = value if _VALID_ID.match(value) else None
                break
        if rid is None:
            rid = f"{self._prefix}-{next(self._counter)}".encode()
        token = request_id.set(rid.decode())
        security = _security_headers(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (REQUEST_ID_HEADER, rid),
                    *security,
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            request_id.reset(token)


def _security_headers(path: str) -> list[tuple[bytes, bytes]]:
    if path.startswith(DOCS_PATHS):
        return DOCS_SECURITY_HEADERS
    if path == "/ui" or path.startswith(DASHBOARD_PREFIX):
        return DASHBOARD_SECURITY_HEADERS
    return API_SECURITY_HEADERS
