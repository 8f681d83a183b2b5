"""Datasets: store once (deduplicated), list, read, delete, and resolve for runs and workers."""

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import IO, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.artifacts import service as artifacts
from app.artifacts.store import ArtifactStore
from app.config import Limits
from app.datasets.ingest import (
    DatasetInputError,
    Ingested,
    IngestOptions,
    ingest_columns,
    ingest_file,
    records_to_columns,
    sha256_of,
)
from app.datasets.models import Dataset
from app.datasets.tables import map_table_file, sample_table_file, write_table_file
from app.errors import ConflictError, NotFoundError
from app.pagination import newest_first
from app.projects import service as projects
from app.training.data import Table, materialize
from app.training.spec import DatasetRef, DatasetSpec, Task


class DatasetNotFoundError(NotFoundError):
    """No dataset (or built-in dataset) has that id or name."""


class DatasetInUseError(ConflictError):
    """Runs still refer to the dataset."""


class DatasetUsers(Protocol):
    """Finds the runs that train on a dataset (runs answer this; datasets cannot import them)."""

    def __call__(self, *, session: Session, dataset_id: int) -> list[int]:
        """Ids of the runs that refer to the dataset, in order."""
        ...


@dataclass(frozen=True)
class Builtin:
    """A dataset shipped inside the package."""

    file: str
    target: str
    task: Task
    description: str


BUILTINS = {
    "iris": Builtin(
        "iris.csv",
        "species",
        "classification",
        "Fisher's iris (1936), 150 flowers, 4 measurements in cm, 3 species; public domain.",
    ),
    "friedman1": Builtin(
        "friedman1.csv",
        "y",
        "regression",
        "Friedman #1 (1991) on 200 points of the Kronecker sequence x_j = frac(i*sqrt(p_j)), "
        "p = 2, 3, 5, 7, 11: y = 10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5, no noise.",
    ),
    "diabetes": Builtin(
        "diabetes.csv",
        "progression",
        "regression",
        "Efron, Hastie, Johnstone and Tibshirani (2004): 442 diabetes patients, age, sex, "
        "body mass index, blood pressure and six blood serum measurements (raw units); the "
        "target is a measure of disease progression a year later, 25 to 346. As distributed "
        "with scikit-learn (BSD-3-Clause).",
    ),
}


def _fingerprint(sha256: str, options: IngestOptions) -> str:
    """One digest of the content and every option that changes what is stored."""
    key = json.dumps(
        [sha256, options.target, options.features, options.missing, options.task],
        separators=(",", ":"),
    )
    return hashlib.sha256(key.encode()).hexdigest()


def _store_once(
    session: Session,
    *,
    reader: Session,
    store: ArtifactStore,
    project: str,
    sha256: str,
    size_bytes: int,
    name: str,
    options: IngestOptions,
    ingest: Callable[[], Ingested],
) -> tuple[Dataset, bool]:
    """The project's dataset for these bytes and options: found again, or ingested and added.

    The lookup goes through `reader`, so the write transaction, which holds SQLite's write
    lock, starts only at the insert, after the long parse and the write of the table file.
    """
    fingerprint = _fingerprint(sha256, options)
    existing = _by_fingerprint(reader, project, fingerprint)
    if existing is not None:
        return existing, False
    # Checked before the parse, so a project over its quota learns it at once, and again
    # under the project's row lock before the insert, so concurrent uploads cannot pass it.
    _check_storage_quota(reader, project, size_bytes)
    ingested = ingest()
    with store.staging_file() as path:
        write_table_file(
            ingested.table, features=ingested.features, target=options.target, path=path
        )
        staged = store.stage(path)
        _check_storage_quota(session, project, size_bytes, lock=True)
        artifact = artifacts.record(session=session, store=store, staged=staged)
    dataset = Dataset(
        project=project,
        name=name,
        sha256=sha256,
        fingerprint=fingerprint,
        format=ingested.format,
        size_bytes=size_bytes,
        task=ingested.task,
        target=options.target,
        features=ingested.features,
        missing=options.missing,
        n_rows=ingested.table.num_rows,
        columns=ingested.columns,
        stats=ingested.stats,
        preview=ingested.preview,
        artifact=artifact,
    )
    try:
        with session.begin_nested():
            session.add(dataset)
    except IntegrityError:
        # The same upload raced this one and was stored first.
        existing = _by_fingerprint(session, project, fingerprint)
        if existing is None:
            raise
        return existing, False
    return dataset, True


def _by_fingerprint(session: Session, project: str, fingerprint: str) -> Dataset | None:
    return session.scalars(
        select(Dataset).where(Dataset.project == project, Dataset.fingerprint == fingerprint)
    ).one_or_none()


def _check_storage_quota(
    session: Session, project: str, size_bytes: int, *, lock: bool = False
) -> None:
    limit = projects.get_project(session=session, name=project, lock=lock).max_dataset_bytes
    if limit is None:
        return
    stored = session.scalar(
        select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.project == project)
    )
    projects.check_quota(
        used=int(stored or 0),
        adding=size_bytes,
        limit=limit,
        what="max_dataset_bytes",
        project=project,
        retry_after=projects.RETRY_AFTER_STORAGE_SECONDS,
    )


def store_file(
    *,
    session: Session,
    reader: Session,
    store: ArtifactStore,
    project: str,
    stream: IO[bytes],
    name: str,
    options: IngestOptions,
    limits: Limits,
    sha256: str | None = None,
) -> tuple[Dataset, bool]:
    """Store an uploaded CSV or Parquet file; `sha256` of its bytes when already known."""
    size_bytes = stream.seek(0, 2)
    return _store_once(
        session,
        reader=reader,
        store=store,
        project=project,
        sha256=sha256 or sha256_of(stream),
        size_bytes=size_bytes,
        name=name,
        options=options,
        ingest=lambda: ingest_file(stream, options=options, limits=limits),
    )


def store_json(
    *,
    session: Session,
    reader: Session,
    store: ArtifactStore,
    project: str,
    name: str,
    options: IngestOptions,
    records: list[dict[str, Any]] | None,
    columns: dict[str, list[Any]] | None,
    limits: Limits,
) -> tuple[Dataset, bool]:
    """Store a dataset sent as JSON records or columns; dedupes on its canonical JSON."""
    data = columns if columns is not None else records_to_columns(records or [])
    canonical = json.dumps(data, separators=(",", ":")).encode()
    return _store_once(
        session,
        reader=reader,
        store=store,
        project=project,
        sha256=hashlib.sha256(canonical).hexdigest(),
        size_bytes=len(canonical),
        name=name,
        options=options,
        ingest=lambda: ingest_columns(
            data,
            options=options,
            limits=limits,
            sent_as="columns" if columns is not None else "records",
        ),
    )


def store_builtin(
    *,
    session: Session,
    reader: Session,
    store: ArtifactStore,
    project: str,
    name: str,
    limits: Limits,
) -> tuple[Dataset, bool]:
    """Store a built-in dataset by name (a no-op returning it when already stored)."""
    builtin = BUILTINS.get(name)
    if builtin is None:
        raise DatasetNotFoundError(
            f"no built-in dataset {name!r}; there are {', '.join(sorted(BUILTINS))}"
        )
    source = resources.files("app.datasets").joinpath("builtin", builtin.file)
    with source.open("rb") as stream:
        return store_file(
            session=session,
            reader=reader,
            store=store,
            project=project,
            stream=stream,
            name=name,
            options=IngestOptions(target=builtin.target, task=builtin.task),
            limits=limits,
        )


def get_dataset(*, session: Session, dataset_id: int, project: str) -> Dataset:
    """The project's dataset with that id (without its rows)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.project != project:
        raise DatasetNotFoundError(f"dataset {dataset_id} not found")
    return dataset


def list_datasets(
    *, session: Session, project: str, limit: int, before_id: int | None
) -> tuple[Sequence[Dataset], int | None]:
    """A page of the project's datasets, newest first, and the id to continue before."""
    return newest_first(
        session=session,
        query=select(Dataset).where(Dataset.project == project),
        id_column=Dataset.id,
        limit=limit,
        before_id=before_id,
    )


def delete_dataset(
    *, session: Session, dataset_id: int, project: str, force: bool, users: DatasetUsers
) -> str:
    """Delete a dataset; refused while runs refer to it unless forced (they then fail to run).

    Returns the digest of its stored table, to release once the deletion commits.
    """
    dataset = get_dataset(session=session, dataset_id=dataset_id, project=project)
    runs = users(session=session, dataset_id=dataset_id)
    if runs and not force:
        shown = ", ".join(str(run_id) for run_id in runs[:10])
        raise DatasetInUseError(
            f"dataset {dataset_id} is used by {len(runs)} run(s) ({shown}); "
            "delete them first or pass force=true"
        )
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    session.expunge(dataset)
    return dataset.artifact_sha256


def _check_ref(dataset: Dataset, ref: DatasetRef, task: Task) -> list[str]:
    """The ref's feature columns; a DatasetInputError naming the field that does not fit."""
    if ref.target != dataset.target:
        raise DatasetInputError(
            ("dataset", "target"),
            f"dataset {dataset.id} has target {dataset.target!r}, not {ref.target!r}",
        )
    if task != dataset.task:
        raise DatasetInputError(
            ("task",),
            f"dataset {dataset.id} is for {dataset.task}, not {task}; set task to {dataset.task}",
        )
    for index, name in enumerate(ref.features or []):
        if name not in dataset.features:
            raise DatasetInputError(
                ("dataset", "features", index),
                f"dataset {dataset.id} has no feature column {name!r}; "
                f"it has {', '.join(repr(feature) for feature in dataset.features)}",
            )
    return ref.features or dataset.features


def stored_for_run(*, session: Session, ref: DatasetRef, project: str) -> Dataset:
    """The project's stored dataset a run names; a 422 naming `dataset.id` when there is none."""
    dataset = session.get(Dataset, ref.id)
    if dataset is None or dataset.project != project:
        raise DatasetInputError(("dataset", "id"), f"dataset {ref.id} does not exist")
    return dataset


def shape_for_run(*, dataset: Dataset, ref: DatasetRef, task: Task) -> tuple[int, int, int]:
    """Rows, features and outputs a run on the dataset trains with, its ref checked."""
    features = _check_ref(dataset, ref, task)
    classes = dataset.stats[dataset.target].get("classes")
    return dataset.n_rows, len(features), len(classes) if classes else 1


def sample_table(*, store: ArtifactStore, dataset: Dataset, rows: int) -> pa.Table:
    """At most `rows` evenly spaced rows of a stored dataset, as named columns."""
    path = store.local_path(dataset.artifact.uri, dataset.artifact_sha256)
    return sample_table_file(path, rows=rows)


def load_table(
    *, session: Session, store: ArtifactStore, dataset: DatasetSpec, task: Task
) -> Table:
    """The training table of any dataset spec; a stored one maps its file from the store.

    The features of a stored table are the mapped file itself (copy-on-write), unless the
    run picks some of its columns.
    """
    if not isinstance(dataset, DatasetRef):
        return materialize(dataset, task)
    stored = session.get(Dataset, dataset.id)
    if stored is None:
        raise DatasetInputError(("dataset", "id"), f"dataset {dataset.id} no longer exists")
    features = _check_ref(stored, dataset, task)
    mapped = map_table_file(store.local_path(stored.artifact.uri, stored.artifact_sha256))
    matrix = mapped.features
    if features != mapped.feature_names:
        columns = [mapped.feature_names.index(name) for name in features]
        matrix = np.ascontiguousarray(matrix[:, columns])
    if task == "classification":
        classes = [label for label, _count in stored.stats[stored.target]["classes"]]
        indices = pc.index_in(mapped.target, value_set=pa.array(classes, mapped.target.type))
        targets = torch.from_numpy(indices.to_numpy().astype(np.int64))
        return Table(torch.from_numpy(matrix), targets, classes=classes, feature_names=features)
    values = mapped.target.to_numpy(zero_copy_only=False).astype(np.float32)
    return Table(torch.from_numpy(matrix), torch.from_numpy(values), feature_names=features)
