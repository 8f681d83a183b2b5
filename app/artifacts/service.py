"""Recording, releasing and collecting artifacts, so no row names a missing object.

The protocol, for any object digest: a writer takes the digest's lock, records the row and
publishes the object inside its transaction, then commits the rows that name it. A release,
after the commit that dropped an object's last user, takes the same lock, and deletes the row
and then the object only if no row names it. The lock (PostgreSQL's advisory lock; SQLite's
one write lock) keeps a writer of the same bytes from publishing between the check and the
delete. A crash leaves at worst an object or a row that nothing names, which
`collect_garbage` removes.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnClause, column, exists, inspect, or_, select, text
from sqlalchemy import table as sql_table
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.artifacts.models import Artifact
from app.artifacts.store import ArtifactStore, StagedObject
from app.database import Database, unit_of_work

logger = logging.getLogger("fitserve.artifacts")
# The first key of PostgreSQL's two-key advisory locks that guard artifact digests ("FSVA").
ARTIFACT_LOCK_CLASS = 0x46535641


def _lock(session: Session, sha256: str) -> None:
    """Hold the digest's lock until the transaction ends (SQLite's write lock already does)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int(sha256[:8], 16) - 2**31
        session.execute(
            text("SELECT pg_advisory_xact_lock(:lock_class, :key)"),
            {"lock_class": ARTIFACT_LOCK_CLASS, "key": key},
        )


def _referencing_columns(session: Session) -> list[ColumnClause[str]]:
    """Every column with a foreign key to an artifact, as the database itself declares them.

    Read from the schema rather than from the models this process happens to import, so a
    command that loads no run or dataset model still sees every user of an object.
    """
    connection = session.connection()
    key = str(connection.engine.url)
    if key not in _REFERENCES:
        inspector = inspect(connection)
        _REFERENCES[key] = [
            (table, column)
            for table in inspector.get_table_names()
            for foreign_key in inspector.get_foreign_keys(table)
            if foreign_key["referred_table"] == Artifact.__tablename__
            for column in foreign_key["constrained_columns"]
        ]
    return [sql_table(table, column(name)).c[name] for table, name in _REFERENCES[key]]


_REFERENCES: dict[str, list[tuple[str, str]]] = {}


def _is_referenced(session: Session, sha256: str) -> bool:
    checks = [exists().where(column == sha256) for column in _referencing_columns(session)]
    return bool(checks) and bool(session.scalar(select(or_(*checks))))


def record(*, session: Session, store: ArtifactStore, staged: StagedObject) -> Artifact:
    """In the caller's transaction: record the staged object and publish it.

    The caller's rows may then name the artifact; they and it become visible together.
    """
    _lock(session, staged.sha256)
    uri = store.publish(staged)
    artifact = session.get(Artifact, staged.sha256)
    if artifact is None:
        artifact = Artifact(sha256=staged.sha256, uri=uri, size_bytes=staged.size_bytes)
        session.add(artifact)
    else:
        # The store may have moved since the row was written; the new copy is the one kept.
        artifact.uri = uri
    session.flush()
    return artifact


def release(*, database: Database, store: ArtifactStore, sha256s: Iterable[str]) -> int:
    """After the commit that dropped their users: delete the objects no row names any more.

    Returns how many were deleted. The caller's work is done by then, so a database or store
    that fails here is logged, not raised: what is left, `collect_garbage` removes.
    """
    deleted = 0
    for sha256 in sorted(set(sha256s)):
        try:
            deleted += _release_one(database, store, sha256)
        except (SQLAlchemyError, OSError):
            logger.warning("could not release artifact %s; gc will", sha256, exc_info=True)
    return deleted


def _release_one(database: Database, store: ArtifactStore, sha256: str) -> int:
    with unit_of_work(database.sessions) as session:
        return release_within(session=session, store=store, sha256s=[sha256])


def release_within(*, session: Session, store: ArtifactStore, sha256s: Iterable[str]) -> int:
    """`release`, inside a transaction the caller owns; returns how many were deleted.

    The caller's transaction must be later than the one that dropped the objects' users:
    should it roll back after an object is deleted, an unnamed row is left behind (collected
    later), never a row that names a deleted object.
    """
    deleted = 0
    for sha256 in sorted(set(sha256s)):
        _lock(session, sha256)
        artifact = session.get(Artifact, sha256)
        if artifact is None or _is_referenced(session, sha256):
            continue
        try:
            with session.begin_nested():
                session.delete(artifact)
        except IntegrityError:
            # A user the schema check missed: the foreign key keeps the object.
            continue
        try:
            store.delete(artifact.uri)
        except OSError:
            logger.warning("could not delete %s; gc will", artifact.uri, exc_info=True)
            continue
        deleted += 1
    return deleted


@dataclass
class Collection:
    """What a garbage collection removed."""

    released: int = 0
    orphans: list[str] = field(default_factory=list)
    staging_files: int = 0


def collect_garbage(*, database: Database, store: ArtifactStore, grace: timedelta) -> Collection:
    """Delete artifacts no row names, objects no artifact row records, and old staging files.

    `grace` protects staging files still being written; objects and rows need none, because
    a writer holds the digest's lock from recording to commit.
    """
    collection = Collection()
    with database.read_sessions() as session:
        recorded = set(session.scalars(select(Artifact.sha256)))
    collection.released = release(
        database=database, store=store, sha256s=_unreferenced(database, recorded)
    )
    for stored in store.objects():
        if stored.sha256 in recorded:
            continue
        with unit_of_work(database.sessions) as session:
            _lock(session, stored.sha256)
            if session.get(Artifact, stored.sha256) is None:
                store.delete(stored.uri)
                collection.orphans.append(stored.uri)
    cutoff = datetime.now(UTC) - grace
    for path, modified in store.staged_files():
        if modified < cutoff:
            path.unlink(missing_ok=True)
            collection.staging_files += 1
    return collection


def _unreferenced(database: Database, recorded: set[str]) -> list[str]:
    with database.read_sessions() as session:
        return [sha256 for sha256 in sorted(recorded) if not _is_referenced(session, sha256)]
