"""The role a route needs, as a FastAPI dependency that yields the caller's Principal.

Every domain's router uses these; the keys package provides the authenticator behind them
(`app.state.authenticator`), so no domain imports it.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.errors import ForbiddenError
from app.principal import Principal, Role

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


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the request and refuses roles below `role`."""

    async def caller(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        auth = authenticator(request)
        headers = request.headers
        header = headers.get("authorization")
        where = {"host": headers.get("host"), "origin": headers.get("origin")}
        principal = auth.cached(header, **where)
        if principal is None:
            # Only a key the cache has not seen yet reaches the database.
            principal = await run_in_threadpool(lambda: auth.authenticate(header, **where))
        if not principal.role.allows(role):
            raise ForbiddenError(f"this needs the {role} role; the key has {principal.role}")
        return principal.at(request.client.host if request.client else None)

    return caller


PredictAccess = Annotated[Principal, Depends(require(Role.PREDICT))]
TrainAccess = Annotated[Principal, Depends(require(Role.TRAIN))]
AdminAccess = Annotated[Principal, Depends(require(Role.ADMIN))]
