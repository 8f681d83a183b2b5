"""Service tier: services and flows against the real database, without any worker process.

`session` is a transaction rolled back after the test (what a service writes is seen inside
it and gone after); `succeeded_run` inserts a run that trained for real, in this process,
with its weights, so registry, serving and dataset logic needs no worker.
"""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.database import make_engine
from app.runs import records
from app.runs import service as runs
from app.runs.models import Run, RunStatus
from app.training.data import materialize
from app.training.engine import Trainer, Uninterrupted
from app.training.serialization import export_weights
from app.training.spec import RunRequest, resolve_spec
from tests.helpers import D2L_SPEC

SuccessfulRun = Callable[..., Run]


@pytest.fixture(autouse=True)
def _empty(empty_database: None) -> None:
    """Tests that commit (queue, migrations) start from an empty database too."""


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    """A session whose every write is rolled back after the test, commits included."""
    engine = make_engine(database_url)
    connection = engine.connect()
    outer = connection.begin()
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()
        engine.dispose()


@pytest.fixture
def succeeded_run(session: Session, store: ArtifactStore) -> SuccessfulRun:
    """Insert a run that trained here, on CPU, with its weights: `succeeded_run(spec_changes)`."""

    def make(**changes: Any) -> Run:
        spec = resolve_spec(RunRequest.model_validate({**D2L_SPEC, **changes}))
        trainer = Trainer(
            spec=spec, table=materialize(spec.dataset, spec.task), device=torch.device("cpu")
        )
        outcome = trainer.run(Uninterrupted())
        run, _ = runs.create_run(
            session=session, project="default", spec=spec, default_max_attempts=3
        )
        run.status = RunStatus.SUCCEEDED
        run.attempt = 1
        run.epochs_done = outcome.epoch
        session.flush()
        weights = export_weights(trainer.module, trainer.architecture)
        with store.staged_bytes(weights.data) as staged:
            records.save_weights(session=session, store=store, run_id=run.id, weights=staged)
        return run

    return make
