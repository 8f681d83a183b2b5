"""Flows commit once, then run their effects; a refusal commits nothing and runs none."""

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.database import Database
from app.errors import ConflictError
from app.principal import OPEN_ACCESS
from app.runs import flows
from app.runs import service as runs
from app.runs.flows import RunHooks
from app.training.spec import RunRequest
from tests.helpers import D2L_SPEC


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = Database.connect(settings.database_url)
    yield database
    database.dispose()


def test_submit_wakes_a_worker_only_for_a_new_run(database: Database, settings: Settings):
    woken: list[str] = []
    hooks = RunHooks(queued=lambda: woken.append("queued"))
    request = RunRequest.model_validate(D2L_SPEC)
    (run, created), (again, created_again) = (
        flows.submit_run(
            database=database,
            request=request,
            settings=settings,
            hooks=hooks,
            principal=OPEN_ACCESS,
            idempotency_key="k",
        )
        for _ in range(2)
    )
    assert (created, created_again, again.id) == (True, False, run.id)
    assert woken == ["queued"]
    with database.read_sessions() as session:
        # Committed: another session sees the run, with task and loss resolved.
        stored = runs.get_run(session=session, run_id=run.id, project="default")
        assert (stored.spec["task"], stored.spec["loss"]) == ("regression", "mse")


def test_a_refused_delete_commits_nothing_and_forgets_nothing(
    database: Database, settings: Settings, store: ArtifactStore
):
    forgotten: list[int] = []

    def refuse(*, session: Session, run_id: int) -> None:
        raise ConflictError(f"run {run_id} is wanted elsewhere")

    request = RunRequest.model_validate(D2L_SPEC)
    run, _ = flows.submit_run(
        database=database,
        request=request,
        settings=settings,
        hooks=RunHooks(),
        principal=OPEN_ACCESS,
    )
    flows.cancel_run(database=database, run_id=run.id, principal=OPEN_ACCESS)
    refusing = RunHooks(deleting=refuse, deleted=forgotten.append)
    with pytest.raises(ConflictError, match="wanted elsewhere"):
        flows.delete_run(
            database=database, store=store, run_id=run.id, hooks=refusing, principal=OPEN_ACCESS
        )
    assert forgotten == []
    with database.read_sessions() as session:
        assert runs.get_run(session=session, run_id=run.id, project="default").status == "cancelled"
    flows.delete_run(
        database=database,
        store=store,
        run_id=run.id,
        hooks=RunHooks(deleted=forgotten.append),
        principal=OPEN_ACCESS,
    )
    assert forgotten == [run.id]
