"""Dataset use cases: each stores or deletes in one unit of work, audited, and commits once."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from sqlalchemy.orm import Session

from app.artifacts import service as artifacts
from app.artifacts.store import ArtifactStore
from app.audit import service as audit
from app.config import Limits
from app.database import Database, unit_of_work
from app.datasets import service
from app.datasets.ingest import IngestOptions
from app.datasets.models import Dataset
from app.datasets.service import DatasetUsers
from app.principal import Principal


@contextmanager
def _storing(database: Database) -> Iterator[tuple[Session, Session]]:
    # The write transaction begins at the insert, after the parse: SQLite's write lock is
    # not held while a large file is read.
    with database.read_sessions() as reader, unit_of_work(database.sessions) as session:
        yield session, reader


def _store(
    database: Database,
    principal: Principal,
    store_with: Callable[..., tuple[Dataset, bool]],
    **arguments: Any,
) -> tuple[Dataset, bool]:
    """Run a `service.store_*` for the principal's project; audit what it created."""
    with _storing(database) as (session, reader):
        dataset, created = store_with(
            session=session, reader=reader, project=principal.project, **arguments
        )
        if created:
            audit.record(
                session=session,
                principal=principal,
                action="dataset.create",
                object_id=dataset.id,
                name=dataset.name,
                size_bytes=dataset.size_bytes,
            )
    return dataset, created


def store_file(
    *,
    database: Database,
    store: ArtifactStore,
    stream: IO[bytes],
    name: str,
    options: IngestOptions,
    limits: Limits,
    principal: Principal,
    sha256: str | None = None,
) -> tuple[Dataset, bool]:
    """Store an uploaded CSV or Parquet file; `sha256` of its bytes when hashed as it streamed."""
    arguments = {
        "stream": stream,
        "name": name,
        "options": options,
        "limits": limits,
        "sha256": sha256,
        "store": store,
    }
    return _store(database, principal, service.store_file, **arguments)


def store_json(
    *,
    database: Database,
    store: ArtifactStore,
    name: str,
    options: IngestOptions,
    records: list[dict[str, Any]] | None,
    columns: dict[str, list[Any]] | None,
    limits: Limits,
    principal: Principal,
) -> tuple[Dataset, bool]:
    """Store a dataset sent as JSON records or columns."""
    arguments = {"name": name, "options": options, "records": records, "columns": columns}
    return _store(database, principal, service.store_json, store=store, limits=limits, **arguments)


def store_builtin(
    *, database: Database, store: ArtifactStore, name: str, limits: Limits, principal: Principal
) -> tuple[Dataset, bool]:
    """Store a dataset shipped with fitserve by name."""
    return _store(database, principal, service.store_builtin, store=store, name=name, limits=limits)


def delete_dataset(
    *,
    database: Database,
    store: ArtifactStore,
    dataset_id: int,
    force: bool,
    users: DatasetUsers,
    principal: Principal,
) -> None:
    """Delete a dataset; refused while runs refer to it unless forced. Then free its table."""
    with unit_of_work(database.sessions) as session:
        table_sha256 = service.delete_dataset(
            session=session,
            dataset_id=dataset_id,
            project=principal.project,
            force=force,
            users=users,
        )
        audit.record(
            session=session,
            principal=principal,
            action="dataset.delete",
            object_id=dataset_id,
            force=force,
        )
    artifacts.release(database=database, store=store, sha256s=[table_sha256])
