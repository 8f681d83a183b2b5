"""Queue bookkeeping against the real database, without worker processes."""

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.config import Settings
from app.database import make_engine, make_session_factory, unit_of_work, utcnow
from app.runs import service as runs
from app.runs.models import FailureKind, Run
from app.training.spec import RunRequest, resolve_spec
from app.worker import queue
from app.worker.models import WorkerRecord
from tests.helpers import D2L_SPEC


def test_a_worker_retired_during_an_outage_is_live_again_at_its_next_heartbeat(
    settings: Settings,
):
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        with unit_of_work(sessions) as session:
            queue.register_worker(
                session=session,
                record=WorkerRecord(id="w1", pid=1, host="h", device="cuda:0", stopped_at=None),
            )
        with unit_of_work(sessions) as session:
            # Another worker saw no heartbeat from w1 for a lease (the database was away).
            queue.retire_silent_workers(session=session, silent_since=utcnow() + timedelta(1))
            assert queue.live_worker_devices(session=session, since=utcnow()) == set()
        with unit_of_work(sessions) as session:
            assert queue.worker_heartbeat(session=session, worker_id="w1", current_run_id=None)
        with unit_of_work(sessions) as session:
            since = utcnow() - timedelta(seconds=5)
            assert queue.live_worker_devices(session=session, since=since) == {"cuda:0"}
            assert not queue.worker_heartbeat(
                session=session, worker_id="gone", current_run_id=None
            )
    finally:
        engine.dispose()


def _claimed(session: Session, lease_seconds: float = 30.0) -> queue.Claim:
    spec = resolve_spec(RunRequest.model_validate(D2L_SPEC))
    runs.create_run(session=session, project="default", spec=spec, default_max_attempts=2)
    claim = queue.claim_next(
        session=session, worker_id="w1", device="cpu", lease_seconds=lease_seconds
    )
    assert claim is not None
    return claim


def test_a_write_after_the_lease_ran_out_is_refused_before_any_reaping(session: Session):
    claim = _claimed(session)
    assert queue.fence(session=session, claim=claim, epochs_done=1) == "running"
    # Advance the clock past the lease: nobody has reaped or claimed the run yet.
    session.execute(
        update(Run)
        .where(Run.id == claim.run_id)
        .values(lease_expires_at=utcnow() - timedelta(seconds=1))
    )
    with pytest.raises(queue.FencedError, match="lease ran out"):
        queue.fence(session=session, claim=claim, epochs_done=2)
    with pytest.raises(queue.FencedError):
        queue.renew_lease(session=session, claim=claim, lease_seconds=30)
    assert session.get(Run, claim.run_id).epochs_done == 1


def test_a_lack_of_resources_requeues_then_fails_and_never_undoes_a_cancel(session: Session):
    claim = _claimed(session)
    error = "OutOfMemoryError: CUDA out of memory"
    status = queue.retry_elsewhere(
        session=session, claim=claim, failure_kind=FailureKind.RESOURCES, error=error
    )
    assert status == "queued"
    again = queue.claim_next(session=session, worker_id="w2", device="cpu", lease_seconds=30)
    assert again is not None and again.attempt == 2
    status = queue.retry_elsewhere(
        session=session, claim=again, failure_kind=FailureKind.RESOURCES, error=error
    )
    run = session.get(Run, claim.run_id)
    session.refresh(run)
    assert (status, run.failure_kind, run.lost_attempts) == ("failed", "resources", 2)

    cancelled = _claimed(session)
    runs.cancel_run(session=session, run_id=cancelled.run_id, project="default")
    status = queue.retry_elsewhere(
        session=session, claim=cancelled, failure_kind=FailureKind.RESOURCES, error=error
    )
    assert status == "cancelled"
