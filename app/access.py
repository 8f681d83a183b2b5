"""The role a route needs, as a FastAPI dependency that yields the caller's Principal.

Every domain's router uses these; the keys package provides the authenticator behind them
(`app.state.authenticator`), so no domain imports it. A browser that logged in to the
dashboard sends its key in the `fitserve_session` cookie instead of the `Authorization`
header (an EventSource cannot send headers); a write authenticated that way must come from a
page of this server (its Origin or Referer names the request's Host), so another site cannot
make the browser send one.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Protocol
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.errors import ForbiddenError, UnauthorizedError
from app.principal import Principal, Role

SESSION_COOKIE = "fitserve_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Declares the scheme in the OpenAPI document; the header is read by the Authenticator.
_bearer = HTTPBearer(auto_error=False, description="An API key from `fitserve keys create`.")


class Authenticates(Protocol):
    """Tells who a request's `Authorization` header speaks for."""

    def cached(
        self, authorization: str | None, *, host: str | None = None, origin: str | None = None
    ) -> Principal | None:
        """From memory alone; None when only `authenticate` can tell."""
        ...

    def authenticate(
        self, authorization: str | None, *, host: str | None = None, origin: str | None = None
    ) -> Principal:
        """Reading the database if need be; raises UnauthorizedError."""
        ...


def authenticator(request: Request) -> Authenticates:
    """The app's authenticator."""
    return request.app.state.authenticator


def same_origin(request: Request) -> bool:
    """Whether the request's Origin (else its Referer) names the host the request was sent to."""
    headers = request.headers
    source = headers.get("origin") or headers.get("referer")
    host = headers.get("host")
    if not source or not host:
        return False
    return urlsplit(source).netloc.lower() == host.lower()


async def authenticate(request: Request) -> Principal:
    """Who the request acts as: its bearer key, else its session cookie, else open access."""
    auth = authenticator(request)
    headers = request.headers
    header = headers.get("authorization")
    where = {"host": headers.get("host"), "origin": headers.get("origin")}
    cookie = request.cookies.get(SESSION_COOKIE) if header is None else None
    if cookie:
        if request.method not in SAFE_METHODS and not same_origin(request):
            raise ForbiddenError(
                "a request authenticated by the session cookie must come from this server's "
                "pages: its Origin (or Referer) does not match its Host"
            )
        header = f"Bearer {cookie}"
    principal = auth.cached(header, **where)
    if principal is not None:
        return principal
    try:
        # Only a key the cache has not seen yet reaches the database.
        return await run_in_threadpool(lambda: auth.authenticate(header, **where))
    except UnauthorizedError:
        # A cookie left from before the keys changed must not lock out a caller whom the
        # service would serve without any key.
        fallback = auth.cached(None, **where) if cookie else None
        if fallback is None:
            raise
        return fallback


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the request and refuses roles below `role`."""

    async def caller(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        principal = await authenticate(request)
        if not principal.role.allows(role):
            raise ForbiddenError(f"this needs the {role} role; the key has {principal.role}")
        return principal.at(request.client.host if request.client else None)

    return caller


PredictAccess = Annotated[Principal, Depends(require(Role.PREDICT))]
TrainAccess = Annotated[Principal, Depends(require(Role.TRAIN))]
AdminAccess = Annotated[Principal, Depends(require(Role.ADMIN))]
