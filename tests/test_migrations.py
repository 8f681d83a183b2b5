"""Migrations build the schema the models describe, from an empty database."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.cli import upgrade_database
from app.config import Settings
from app.database import Base, make_engine


def _assert_matches_models(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert differences == []
    assert {
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
    } <= tables


def test_upgrade_of_an_empty_sqlite_database(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade_database(Settings(database_url=url))
    _assert_matches_models(url)


def test_the_test_database_was_built_by_migrations(database_url: str):
    # On PostgreSQL the session fixture dropped the schema and ran the migrations.
    _assert_matches_models(database_url)
