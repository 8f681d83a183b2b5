"""Requests as data, and the sync and async transports that send them.

Every API method builds a `Call` (what to send and how to read the answer) without I/O, so
`Client` and `AsyncClient` share all of it and differ only in how a call is executed.
"""

import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from httpx_sse import EventSource, ServerSentEvent

from fitserve_client.errors import ERRORS_BY_STATUS, FitserveAPIError

Result = TypeVar("Result")

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "fitserve-client/0.1"


@dataclass(frozen=True)
class Request:
    """One HTTP request, before it is sent."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | Iterable[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # None keeps the client's timeout; streams set their own read timeout.
    timeout: httpx.Timeout | None = None

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments for httpx's `request`/`stream`, leaving out what is unset."""
        arguments: dict[str, Any] = {"params": _query(self.params), "headers": self.headers}
        if self.json is not None:
            arguments["json"] = self.json
        if self.content is not None:
            arguments["content"] = self.content
        if self.timeout is not None:
            arguments["timeout"] = self.timeout
        return arguments


@dataclass(frozen=True)
class Call(Generic[Result]):
    """A request and how to turn its (successful) answer into a result."""

    request: Request
    parse: Callable[[httpx.Response], Result]


def _query(params: dict[str, Any] | None) -> dict[str, Any] | None:
    # None means "not given": the server's default applies.
    if params is None:
        return None
    return {name: value for name, value in params.items() if value is not None}


def api_error(response: httpx.Response) -> FitserveAPIError:
    """The exception for an error answer (its body already read)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    detail: Any = body.get("detail") if isinstance(body, dict) else None
    if detail is None:
        detail = response.text or response.reason_phrase
    type_, loc = None, None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        type_, loc = detail[0].get("type"), detail[0].get("loc")
    retry_after = response.headers.get("retry-after")
    kind = ERRORS_BY_STATUS.get(response.status_code, FitserveAPIError)
    return kind(
        response.status_code,
        detail,
        type=type_,
        loc=loc,
        request_id=response.headers.get("x-request-id"),
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def _headers(key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


class SyncTransport:
    """Sends calls with an `httpx.Client`."""

    def __init__(self, url: str, key: str | None, timeout: float | httpx.Timeout) -> None:
        self.http = httpx.Client(base_url=url, headers=_headers(key), timeout=timeout)

    def call(self, call: Call[Result]) -> Result:
        """Send the request; the parsed answer, or the API's error raised."""
        response = self.http.request(
            call.request.method, call.request.path, **call.request.arguments()
        )
        if response.is_error:
            raise api_error(response)
        return call.parse(response)

    @contextmanager
    def events(self, request: Request) -> Iterator[Iterator[ServerSentEvent]]:
        """Open a Server-Sent Events stream; its messages as they arrive."""
        with self.http.stream(request.method, request.path, **request.arguments()) as response:
            if response.is_error:
                response.read()
                raise api_error(response)
            yield EventSource(response).iter_sse()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()


async def _async_chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    # Upload bodies are produced by shared (sync) generators reading local files in chunks.
    for chunk in chunks:
        yield chunk


class AsyncTransport:
    """Sends calls with an `httpx.AsyncClient`."""

    def __init__(self, url: str, key: str | None, timeout: float | httpx.Timeout) -> None:
        self.http = httpx.AsyncClient(base_url=url, headers=_headers(key), timeout=timeout)

    @staticmethod
    def _arguments(request: Request) -> dict[str, Any]:
        arguments = request.arguments()
        content = arguments.get("content")
        if content is not None and not isinstance(content, bytes):
            arguments["content"] = _async_chunks(content)
        return arguments

    async def call(self, call: Call[Result]) -> Result:
        """Send the request; the parsed answer, or the API's error raised."""
        request = call.request
        response = await self.http.request(request.method, request.path, **self._arguments(request))
        if response.is_error:
            raise api_error(response)
        return call.parse(response)

    @asynccontextmanager
    async def events(self, request: Request) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
        """Open a Server-Sent Events stream; its messages as they arrive."""
        async with self.http.stream(
            request.method, request.path, **self._arguments(request)
        ) as response:
            if response.is_error:
                await response.aread()
                raise api_error(response)
            yield EventSource(response).aiter_sse()

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()
