"""Migrations build the schema the models describe, keep the rows they find, and go back."""

import hashlib
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from app.artifacts.store import open_store
from app.cli import downgrade_database, upgrade_database
from app.config import Settings
from app.database import Base, make_engine
from app.datasets.tables import map_table_file
from tests.helpers import S3_BUCKET

WEIGHTS = b"safetensors bytes"
TENSORS = b"checkpoint tensors"
TABLE = pa.table(
    {"a": pa.array([1, 2], pa.float32()), "b": pa.array([3, 4], pa.float32()), "y": [0.5, 1.5]}
)


def _column_stream(table: pa.Table) -> bytes:
    """A dataset as revision 0002 stored it: an Arrow IPC stream of its columns."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


TABLES = {
    "runs",
    "epochs",
    "checkpoints",
    "weights",
    "workers",
    "datasets",
    "registered_models",
    "model_versions",
    "model_aliases",
    "registry_state",
    "projects",
    "api_keys",
    "audit_events",
    "run_events",
    "run_tags",
    "sweeps",
    "sweep_trials",
    "artifacts",
    "alembic_version",
}


def _assert_matches_models(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert differences == []
    assert tables >= TABLES


@pytest.mark.once
def test_upgrade_of_an_empty_sqlite_database(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade_database(Settings(database_url=url))
    _assert_matches_models(url)


def test_the_test_database_was_built_by_migrations(database_url: str):
    # On PostgreSQL the session fixture dropped the schema and ran the migrations.
    _assert_matches_models(database_url)


@pytest.fixture
def scratch_url(database_url: str, tmp_path: Path) -> str:
    """A database of its own to migrate up and down: a SQLite file, or a PostgreSQL schema."""
    if not database_url.startswith("postgresql"):
        return f"sqlite:///{tmp_path / 'scratch.db'}"
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA IF EXISTS migration_scratch CASCADE"))
        connection.execute(text("CREATE SCHEMA migration_scratch"))
    engine.dispose()
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}options=-csearch_path%3Dmigration_scratch"


def _rows(engine: Engine, query: str) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(query))]


def _insert(engine: Engine, statement: str, **values: object) -> None:
    with engine.begin() as connection:
        connection.execute(text(statement), values)


def _insert_run(engine: Engine, run_id: int, spec: dict) -> None:
    _insert(
        engine,
        "INSERT INTO runs (id, status, spec, task, device_request, epochs_total, epochs_done, "
        "created_at, queued_at, attempt, lost_attempts, max_attempts) VALUES (:id, "
        "'succeeded', :spec, 'regression', 'auto', 1, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
        "1, 0, 3)",
        id=run_id,
        spec=json.dumps(spec),
    )
    _insert(
        engine,
        "INSERT INTO epochs (run_id, epoch, attempt, train_loss, metrics, seconds, created_at) "
        "VALUES (:id, 1, 1, 0.5, '{}', 0.1, CURRENT_TIMESTAMP)",
        id=run_id,
    )


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where 0008 moves the blobs: a directory, or a prefix in moto's S3."""
    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3_endpoint")
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"


def test_rows_written_at_each_revision_survive_upgrades_and_downgrades(
    scratch_url: str, store_url: str, tmp_path: Path
):
    settings = Settings(
        database_url=scratch_url,
        artifacts=store_url,
        artifact_cache_dir=str(tmp_path / "cache"),
    )
    engine = make_engine(scratch_url)
    on_dataset = {"dataset": {"type": "dataset", "id": 1, "target": "y"}, "epochs": 1}
    try:
        # 0001: runs (one names a dataset that never existed, as a force-deleted one would).
        upgrade_database(settings, "0001")
        _insert_run(engine, 1, {"dataset": {"type": "synthetic_linear"}, "chaos": None})
        _insert_run(engine, 2, {**on_dataset, "dataset": {**on_dataset["dataset"], "id": 99}})
        _insert(
            engine,
            "INSERT INTO weights (run_id, data, sha256, size_bytes, created_at) "
            "VALUES (1, :data, :sha256, 1, CURRENT_TIMESTAMP)",
            data=WEIGHTS,
            sha256=hashlib.sha256(WEIGHTS).hexdigest(),
        )
        _insert(
            engine,
            "INSERT INTO checkpoints (run_id, attempt, epoch, batch, tensors, state, created_at) "
            "VALUES (1, 1, 1, 0, :data, '{}', CURRENT_TIMESTAMP)",
            data=TENSORS,
        )
        # 0002: a dataset and a run on it.
        upgrade_database(settings, "0002")
        _insert(
            engine,
            "INSERT INTO datasets (id, name, sha256, fingerprint, format, size_bytes, task, "
            "target, features, missing, n_rows, columns, stats, preview, data, created_at) "
            "VALUES (1, 'd', 'a', 'f', 'csv', 1, 'regression', 'y', '[\"a\", \"b\"]', "
            "'error', 2, '[]', '{}', '[]', :data, CURRENT_TIMESTAMP)",
            data=_column_stream(TABLE),
        )
        _insert_run(engine, 3, on_dataset)
        # 0003: a registered version of run 1.
        upgrade_database(settings, "0003")
        _insert(
            engine,
            "INSERT INTO registered_models (id, name, created_at) "
            "VALUES (1, 'm', CURRENT_TIMESTAMP)",
        )
        _insert(
            engine,
            "INSERT INTO model_versions (id, model_id, version, run_id, weights_sha256, "
            "created_at) VALUES (1, 1, 1, 1, 'w', CURRENT_TIMESTAMP)",
        )

        upgrade_database(settings)
        _assert_matches_models(scratch_url)
        # 0008: the blobs are objects in the store, named by digest; the table maps.
        store = open_store(settings)
        (uri, sha256), *_ = _rows(
            engine,
            "SELECT uri, datasets.artifact_sha256 FROM datasets "
            "JOIN artifacts ON artifacts.sha256 = datasets.artifact_sha256",
        )
        mapped = map_table_file(store.local_path(uri, sha256))
        assert mapped.features.tolist() == [[1.0, 3.0], [2.0, 4.0]]
        assert mapped.target.to_pylist() == [0.5, 1.5]
        for blob, query in (
            (WEIGHTS, "SELECT uri FROM weights JOIN artifacts USING (sha256)"),
            (
                TENSORS,
                "SELECT uri FROM checkpoints "
                "JOIN artifacts ON artifacts.sha256 = checkpoints.tensors_sha256",
            ),
        ):
            assert store.read_bytes(_rows(engine, query)[0][0]) == blob
        downgrade_database(settings, "0007")
        assert _rows(engine, "SELECT data FROM weights")[0][0] == WEIGHTS
        assert _rows(engine, "SELECT tensors FROM checkpoints")[0][0] == TENSORS
        stream = bytes(_rows(engine, "SELECT data FROM datasets")[0][0])
        assert ipc.open_stream(pa.py_buffer(stream)).read_all().equals(TABLE)
        upgrade_database(settings)
        # A run on a stored dataset points at it; one whose dataset is gone points nowhere.
        assert _rows(engine, "SELECT id, dataset_id FROM runs ORDER BY id") == [
            (1, None),
            (2, None),
            (3, 1),
        ]
        stored = _rows(engine, "SELECT spec FROM runs WHERE id = 1")[0][0]
        assert "chaos" not in (json.loads(stored) if isinstance(stored, str) else stored)
        # Rebuilding the runs table on SQLite must not cascade into the rows that refer to it.
        assert _rows(engine, "SELECT run_id FROM epochs ORDER BY run_id") == [(1,), (2,), (3,)]
        assert _rows(engine, "SELECT run_id FROM weights") == [(1,)]
        assert _rows(engine, "SELECT run_id FROM model_versions") == [(1,)]
        # 0005: everything found belongs to the project `default`.
        for table in ("runs", "datasets", "registered_models"):
            assert set(_rows(engine, f"SELECT project FROM {table}")) == {("default",)}, table

        downgrade_database(settings, "0004")
        for table in ("runs", "datasets", "registered_models"):
            assert "project" not in {c["name"] for c in inspect(engine).get_columns(table)}
        assert _rows(engine, "SELECT id FROM runs ORDER BY id") == [(1,), (2,), (3,)]
        assert _rows(engine, "SELECT run_id FROM model_versions") == [(1,)]
        downgrade_database(settings, "0003")
        assert "dataset_id" not in {c["name"] for c in inspect(engine).get_columns("runs")}
        assert _rows(engine, "SELECT run_id FROM epochs ORDER BY run_id") == [(1,), (2,), (3,)]
        assert _rows(engine, "SELECT run_id FROM model_versions") == [(1,)]
        downgrade_database(settings, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_database(settings)
        _assert_matches_models(scratch_url)
    finally:
        engine.dispose()
