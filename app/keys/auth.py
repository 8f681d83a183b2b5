"""Authentication: who a request's bearer key speaks for, from memory on the hot path.

Each API process keeps the active keys in a `KeyCache` that a poller reloads when keys are
created or revoked (within `key_poll_seconds`), so a warm request never touches the database
and a revoked key stops working everywhere within that interval. A key not in the cache yet
(made a moment ago) is looked up once in the database.
"""

import ipaddress
import logging
from typing import Literal

from sqlalchemy.orm import Session, sessionmaker

from app.errors import UnauthorizedError
from app.keys import service
from app.keys.cache import KeyCache
from app.principal import OPEN_ACCESS, Principal

AuthMode = Literal["required", "off"]
logger = logging.getLogger("fitserve.auth")


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the API on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_host(host: str) -> bool:
    """Whether a Host header (or an origin's host) names this machine, port or not."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.split(":")[0]
    return is_loopback(name)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer KEY` header."""
    if authorization is None:
        return None
    scheme, _, key = authorization.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


class Authenticator:
    """Decides who a request acts as, and whether it must present a key at all."""

    def __init__(
        self,
        *,
        mode: AuthMode | None,
        host: str,
        sessions: sessionmaker[Session],
        cache: KeyCache | None = None,
    ) -> None:
        self.mode = mode
        self.loopback = is_loopback(host)
        self.cache = cache or KeyCache()
        self._sessions = sessions
        self._generation: tuple[int, int] | None = None

    @property
    def required(self) -> bool:
        """Whether requests need a key: by setting, else once any key exists or off loopback."""
        if self.mode is not None:
            return self.mode == "required"
        # Until the keys are read, fail closed.
        return not self.loopback or self.cache.any_keys or not self.cache.loaded

    def cached(
        self, authorization: str | None, *, host: str | None = None, origin: str | None = None
    ) -> Principal | None:
        """Who the request acts as, from memory alone; None when only `authenticate` can tell."""
        key = bearer_key(authorization)
        if key is None:
            if self.required or authorization is not None or not self._open_to(host, origin):
                return None
            return OPEN_ACCESS
        return self.cache.principal(key)

    def _open_to(self, host: str | None, origin: str | None) -> bool:
        """Whether a request without a key may act as OPEN_ACCESS.

        Always with FITSERVE_AUTH=off. Open because nothing is configured (a loopback bind,
        no key yet), only a request from this machine may: a loopback Host, and no Origin
        but this machine's. Otherwise any web page the developer opens could send writes
        (a cross-site form), or read answers through a name that resolves to 127.0.0.1.
        """
        if self.mode == "off":
            return True
        if host is None or not _loopback_host(host):
            return False
        return origin is None or _loopback_host(origin.partition("://")[2] or origin)

    def authenticate(
        self, authorization: str | None, *, host: str | None = None, origin: str | None = None
    ) -> Principal:
        """Who the request acts as, reading the database for a key the cache lacks."""
        principal = self.cached(authorization, host=host, origin=origin)
        if principal is not None:
            return principal
        key = bearer_key(authorization)
        if key is None and not self.required and authorization is None:
            raise UnauthorizedError(
                "without an API key only requests from this machine are served (a loopback "
                f"Host and Origin; this one has Host {host!r}, Origin {origin!r}): send "
                "`Authorization: Bearer KEY`"
            )
        if key is None:
            raise UnauthorizedError(
                "this endpoint needs an API key: send `Authorization: Bearer KEY`"
            )
        prefix = service.prefix_of(key)
        if prefix is not None:
            with self._sessions() as session:
                known = service.find_active(session=session, prefix=prefix)
            if known is not None and service.matches(known, key):
                return known.principal
        raise UnauthorizedError("the API key is unknown or revoked")

    def refresh(self) -> None:
        """Reload the keys when any was created or revoked since the last look."""
        with self._sessions() as session:
            generation = service.key_generation(session=session)
            if generation == self._generation and self.cache.loaded:
                return
            keys = service.active_keys(session=session)
        self.cache.replace(keys, any_keys=generation[0] > 0)
        self._generation = generation

    def describe(self) -> str:
        """One line on how requests are authenticated, for the start-up log."""
        if self.required:
            return "auth is required: every request but /healthz and the docs needs an API key"
        if self.mode == "off":
            reason, after = "FITSERVE_AUTH=off", ""
        else:
            reason = "no API key exists yet and the API listens on loopback only"
            after = "; the first `fitserve keys create` turns it on"
        return (
            f"auth is off ({reason}): requests without a key act as project "
            f"{OPEN_ACCESS.project!r} with the admin role{after}"
        )
