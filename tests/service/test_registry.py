"""Registry logic on the real database, with runs that trained in this process."""

import pytest
from sqlalchemy.orm import Session

from app.registry import service as registry
from app.registry.service import (
    AliasNotFoundError,
    ModelRef,
    ReservedAliasError,
    RunRegisteredError,
)
from app.runs import service as runs
from app.runs.service import RunNotFoundError, RunStateError
from app.training.spec import RunRequest, resolve_spec
from tests.helpers import D2L_SPEC
from tests.service.conftest import SuccessfulRun


def test_versions_aliases_and_resolution_move_the_generation(
    session: Session, succeeded_run: SuccessfulRun
):
    first, second = succeeded_run(), succeeded_run(seed=1)
    start = registry.current_generation(session=session)
    one = registry.register_version(
        session=session, project="default", name="prices", run_id=first.id
    )
    two = registry.register_version(
        session=session, project="default", name="prices", run_id=second.id
    )
    assert (one.version, two.version) == (1, 2)
    assert registry.resolve(session=session, ref=ModelRef("default", "prices")).run_id == second.id
    registry.set_alias(
        session=session, project="default", name="prices", alias="production", version=1
    )
    by_alias = registry.resolve(
        session=session, ref=ModelRef("default", "prices", alias="production")
    )
    assert (by_alias.version, by_alias.run_id) == (1, first.id)
    registry.set_alias(
        session=session, project="default", name="prices", alias="production", version=2
    )
    assert (
        registry.resolve(
            session=session, ref=ModelRef("default", "prices", alias="production")
        ).version
        == 2
    )
    # Two registrations and two alias writes: every change is seen by the watchers.
    assert registry.current_generation(session=session) == start + 4
    registry.delete_alias(session=session, project="default", name="prices", alias="production")
    with pytest.raises(AliasNotFoundError):
        registry.resolve(session=session, ref=ModelRef("default", "prices", alias="production"))


def test_only_succeeded_runs_with_weights_can_be_registered(
    session: Session, succeeded_run: SuccessfulRun
):
    queued, _ = runs.create_run(
        project="default",
        session=session,
        spec=resolve_spec(RunRequest.model_validate(D2L_SPEC)),
        default_max_attempts=3,
    )
    with pytest.raises(RunStateError, match="only succeeded runs") as refused:
        registry.register_version(session=session, project="default", name="m", run_id=queued.id)
    assert refused.value.status == 409
    with pytest.raises(RunNotFoundError) as missing:
        registry.register_version(session=session, project="default", name="m", run_id=987654)
    assert missing.value.status == 404
    reserved = succeeded_run()
    registry.register_version(session=session, project="default", name="m", run_id=reserved.id)
    with pytest.raises(ReservedAliasError) as latest:
        registry.set_alias(session=session, project="default", name="m", alias="latest", version=1)
    assert (latest.value.status, latest.value.loc) == (422, ("path", "alias"))


def test_a_registered_run_refuses_deletion_and_an_unregistered_one_bumps_the_generation(
    session: Session, succeeded_run: SuccessfulRun
):
    kept, free = succeeded_run(), succeeded_run(seed=2)
    registry.register_version(session=session, project="default", name="kept", run_id=kept.id)
    with pytest.raises(RunRegisteredError, match="registered as kept:1"):
        registry.release_run(session=session, run_id=kept.id)
    before = registry.current_generation(session=session)
    registry.release_run(session=session, run_id=free.id)
    runs.delete_run(session=session, run_id=free.id, project="default")
    assert registry.current_generation(session=session) == before + 1
    with pytest.raises(RunNotFoundError):
        runs.get_run(session=session, run_id=free.id, project="default")
