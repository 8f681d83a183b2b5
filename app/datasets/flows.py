"""Dataset use cases: each stores or deletes in one unit of work and commits once."""

from typing import Any, BinaryIO

from app.config import Limits
from app.database import Database, unit_of_work
from app.datasets import service
from app.datasets.ingest import IngestOptions
from app.datasets.models import Dataset
from app.datasets.service import DatasetUsers


def store_file(
    *, database: Database, stream: BinaryIO, name: str, options: IngestOptions, limits: Limits
) -> tuple[Dataset, bool]:
    """Store an uploaded CSV or Parquet file; returns the dataset and whether it is new."""
    # The write transaction begins at the insert, after the parse: SQLite's write lock is
    # not held while a large file is read.
    with database.read_sessions() as reader, unit_of_work(database.sessions) as session:
        return service.store_file(
            session=session, reader=reader, stream=stream, name=name, options=options, limits=limits
        )


def store_json(
    *,
    database: Database,
    name: str,
    options: IngestOptions,
    records: list[dict[str, Any]] | None,
    columns: dict[str, list[Any]] | None,
    limits: Limits,
) -> tuple[Dataset, bool]:
    """Store a dataset sent as JSON records or columns."""
    with database.read_sessions() as reader, unit_of_work(database.sessions) as session:
        return service.store_json(
            session=session,
            reader=reader,
            name=name,
            options=options,
            records=records,
            columns=columns,
            limits=limits,
        )


def store_builtin(*, database: Database, name: str, limits: Limits) -> tuple[Dataset, bool]:
    """Store a dataset shipped with fitserve by name."""
    with database.read_sessions() as reader, unit_of_work(database.sessions) as session:
        return service.store_builtin(session=session, reader=reader, name=name, limits=limits)


def delete_dataset(
    *, database: Database, dataset_id: int, force: bool, users: DatasetUsers
) -> None:
    """Delete a dataset; refused while runs refer to it unless forced."""
    with unit_of_work(database.sessions) as session:
        service.delete_dataset(session=session, dataset_id=dataset_id, force=force, users=users)
