"""API keys: create (the key is returned once), list, revoke, and look up by prefix.

A key is `fsk_<prefix>_<secret>`. The prefix is public and indexed; only the sha256 of the
whole key is stored. Keys are 256-bit random, so a fast hash is as safe as a slow one.
"""

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.database import utcnow
from app.errors import NotFoundError
from app.keys.models import ApiKey
from app.principal import Principal, Role
from app.projects import service as projects

KEY_PATTERN = re.compile(r"^fsk_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")


class KeyNotFoundError(NotFoundError):
    """No key has that id."""

    def __init__(self, key_id: int) -> None:
        super().__init__(f"key {key_id} not found")


@dataclass(frozen=True)
class KnownKey:
    """An active key as the caches hold it: the hash to compare and who it speaks for."""

    secret_sha256: str
    principal: Principal


def digest(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str) -> str | None:
    """The public prefix of a well-formed key, or None."""
    match = KEY_PATTERN.match(key)
    return match[1] if match else None


def matches(known: KnownKey, key: str) -> bool:
    """Whether `key` is the key `known` was made from, in constant time."""
    return hmac.compare_digest(known.secret_sha256, digest(key))


def create_key(
    *, session: Session, project: str, role: Role, label: str | None
) -> tuple[ApiKey, str]:
    """Add a key for the project (created if new); returns the row and the key itself."""
    projects.ensure_project(session=session, name=project)
    prefix = secrets.token_hex(8)
    key = f"fsk_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(prefix=prefix, secret_sha256=digest(key), project=project, role=role, label=label)
    session.add(row)
    session.flush()
    return row, key


def list_keys(*, session: Session, project: str | None) -> Sequence[ApiKey]:
    """Keys by id, of one project or all, revoked ones included."""
    query = select(ApiKey).order_by(ApiKey.id)
    if project is not None:
        query = query.where(ApiKey.project == project)
    return session.scalars(query).all()


def revoke_key(*, session: Session, key_id: int) -> ApiKey:
    """Revoke a key for good; revoking twice keeps the first time."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise KeyNotFoundError(key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def known(row: ApiKey) -> KnownKey:
    """The cacheable form of an active key."""
    principal = Principal(project=row.project, role=Role(row.role), key_id=row.id)
    return KnownKey(secret_sha256=row.secret_sha256, principal=principal)


def find_active(*, session: Session, prefix: str) -> KnownKey | None:
    """The active key with that prefix, if any."""
    row = session.scalars(
        select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ).one_or_none()
    return known(row) if row is not None else None


def active_keys(*, session: Session) -> dict[str, KnownKey]:
    """Every active key by prefix."""
    rows = session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))).all()
    return {row.prefix: known(row) for row in rows}


def key_generation(*, session: Session) -> tuple[int, int]:
    """Keys ever created and keys revoked: keys are never deleted, so any change moves this."""
    created, revoked = session.execute(
        select(func.count(ApiKey.id), func.count(ApiKey.revoked_at))
    ).one()
    return created, revoked
