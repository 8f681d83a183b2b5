"""Migrations build the schema the models describe, keep the rows they find, and go back."""

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from app.cli import downgrade_database, upgrade_database
from app.config import Settings
from app.database import Base, make_engine

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


def test_rows_written_at_0003_survive_0004_and_its_downgrade(scratch_url: str):
    settings = Settings(database_url=scratch_url)
    upgrade_database(settings, "0003")
    engine = make_engine(scratch_url)
    spec = {"dataset": {"type": "dataset", "id": 1, "target": "y"}, "chaos": None, "epochs": 1}
    orphan = {"dataset": {"type": "dataset", "id": 99, "target": "y"}, "epochs": 1}
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO datasets (id, name, sha256, fingerprint, format, size_bytes, "
                    "task, target, features, missing, n_rows, columns, stats, preview, data, "
                    "created_at) VALUES (1, 'd', 'a', 'f', 'csv', 1, 'regression', 'y', '[]', "
                    "'error', 1, '[]', '{}', '[]', :data, CURRENT_TIMESTAMP)"
                ),
                {"data": b"x"},
            )
            for run_id, run_spec in ((1, spec), (2, orphan)):
                connection.execute(
                    text(
                        "INSERT INTO runs (id, status, spec, task, device_request, "
                        "epochs_total, epochs_done, created_at, queued_at, attempt, "
                        "lost_attempts, max_attempts) VALUES (:id, 'succeeded', :spec, "
                        "'regression', 'auto', 1, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
                        "1, 0, 3)"
                    ),
                    {"id": run_id, "spec": json.dumps(run_spec)},
                )
                connection.execute(
                    text(
                        "INSERT INTO epochs (run_id, epoch, attempt, train_loss, metrics, "
                        "seconds, created_at) VALUES (:id, 1, 1, 0.5, '{}', 0.1, "
                        "CURRENT_TIMESTAMP)"
                    ),
                    {"id": run_id},
                )
        upgrade_database(settings)
        _assert_matches_models(scratch_url)
        # A run on a stored dataset points at it; one whose dataset is gone points nowhere.
        assert _rows(engine, "SELECT id, dataset_id FROM runs ORDER BY id") == [(1, 1), (2, None)]
        stored = _rows(engine, "SELECT spec FROM runs WHERE id = 1")[0][0]
        assert "chaos" not in (json.loads(stored) if isinstance(stored, str) else stored)
        # Rebuilding the runs table on SQLite must not cascade into the epochs.
        assert _rows(engine, "SELECT run_id FROM epochs ORDER BY run_id") == [(1,), (2,)]

        downgrade_database(settings, "0003")
        assert "dataset_id" not in {c["name"] for c in inspect(engine).get_columns("runs")}
        assert _rows(engine, "SELECT run_id FROM epochs ORDER BY run_id") == [(1,), (2,)]
        downgrade_database(settings, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_database(settings)
        _assert_matches_models(scratch_url)
    finally:
        engine.dispose()
