"""Alembic environment: the URL comes from the caller or from fitserve's Settings."""

from alembic import context

from app.audit import models as audit_models  # noqa: F401  (registers the tables)
from app.config import Settings
from app.database import Base, make_engine
from app.datasets import models as datasets_models  # noqa: F401
from app.keys import models as keys_models  # noqa: F401
from app.projects import models as projects_models  # noqa: F401
from app.registry import models as registry_models  # noqa: F401
from app.runs import models as runs_models  # noqa: F401
from app.sweeps import models as sweeps_models  # noqa: F401
from app.worker import models as worker_models  # noqa: F401

config = context.config


def run_migrations_online() -> None:
    url = config.attributes.get("database_url") or Settings().database_url
    engine = make_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # SQLite alters a table by copying it and dropping the old one; with foreign keys
            # enforced, that drop would cascade into every table that refers to it. The pragma
            # only takes effect outside a transaction, hence the driver connection.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
