"""Engine, sessions and the declarative base shared by every domain package."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Connection, CursorResult, Dialect, Result
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# How long a SQLite writer waits for the lock before "database is locked". Kept well below
# the lease (Settings checks it): a write that waits longer is retried by the worker, and a
# healthy worker must never lose its lease to one long wait.
DEFAULT_SQLITE_BUSY_TIMEOUT_SECONDS = 5.0


class Base(DeclarativeBase):
    """Declarative base whose metadata names every constraint predictably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def rows_matched(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched: its cursor's rowcount."""
    return cast(CursorResult[Any], result).rowcount


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    # pysqlite's own transaction handling would defeat BEGIN IMMEDIATE, so SQLAlchemy
    # emits BEGIN itself; writers take the write lock up front and wait on busy_timeout
    # instead of failing with "database is locked" when upgrading a read lock.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(
    database_url: str, *, sqlite_busy_timeout: float = DEFAULT_SQLITE_BUSY_TIMEOUT_SECONDS
) -> Engine:
    """Create an engine for the URL, with SQLite tuned for several processes."""
    for bare in ("postgresql://", "postgres://"):
        if database_url.startswith(bare):
            database_url = "postgresql+psycopg://" + database_url.removeprefix(bare)
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": sqlite_busy_timeout})
        _configure_sqlite(engine, round(sqlite_busy_timeout * 1000))
        return engine
    return create_engine(database_url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose sessions keep loaded objects usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def read_only_engine(engine: Engine) -> Engine:
    """The same pool, but SQLite transactions begin DEFERRED: readers never queue behind writers."""
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(sqlite_begin="DEFERRED")


@dataclass(frozen=True)
class Database:
    """One engine with its two session factories: for writes, and for reads that never queue."""

    engine: Engine
    sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]

    @classmethod
    def connect(
        cls,
        database_url: str,
        *,
        sqlite_busy_timeout: float = DEFAULT_SQLITE_BUSY_TIMEOUT_SECONDS,
    ) -> "Database":
        """Open an engine for the URL and make both factories on it."""
        engine = make_engine(database_url, sqlite_busy_timeout=sqlite_busy_timeout)
        return cls(
            engine=engine,
            sessions=make_session_factory(engine),
            read_sessions=make_session_factory(read_only_engine(engine)),
        )

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session, one transaction: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session
