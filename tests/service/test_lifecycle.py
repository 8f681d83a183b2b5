"""Every transition of the run life cycle (app/runs/lifecycle.py), driven through the code
that makes it: the API's service and the queue gateway, on the real database."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.config import Limits
from app.database import utcnow
from app.runs import lifecycle
from app.runs import service as runs
from app.runs.models import FailureKind, Run, RunStatus
from app.training.spec import RunRequest, resolve_spec
from app.worker import queue
from tests.helpers import D2L_SPEC

Q, R, C = RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.CANCELLING
S, F, X, P = RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PRUNED


@dataclass
class Held:
    """A run in a given status, and the claim that holds it while it is active."""

    run_id: int
    claim: queue.Claim | None


def _create(session: Session, max_attempts: int, device: str = "auto") -> int:
    spec = resolve_spec(RunRequest.model_validate({**D2L_SPEC, "device": device}))
    run, _ = runs.create_run(
        session=session, project="default", spec=spec, default_max_attempts=max_attempts
    )
    return run.id


def _claim(session: Session) -> queue.Claim:
    claim = queue.claim_next(session=session, worker_id="w1", device="cpu", lease_seconds=30)
    assert claim is not None
    return claim


def run_in(session: Session, status: RunStatus, max_attempts: int = 3) -> Held:
    """Bring a new run to `status` the way the service and the queue do."""
    run_id = _create(session, max_attempts)
    if status == Q:
        return Held(run_id, None)
    if status == X:
        runs.cancel_run(session=session, run_id=run_id, project="default")
        return Held(run_id, None)
    claim = _claim(session)
    if status == C:
        runs.cancel_run(session=session, run_id=run_id, project="default")
    elif status in (S, F):
        queue.finish(session=session, claim=claim, status=status)
    elif status == P:
        queue.hand_back(session=session, claim=claim, pruned=True)
    return Held(run_id, claim if status in (R, C) else None)


def _expire(session: Session, run_id: int) -> None:
    session.execute(
        update(Run).where(Run.id == run_id).values(lease_expires_at=utcnow() - timedelta(1))
    )


def _resume(session: Session, held: Held) -> None:
    runs.resume_run(
        session=session, run_id=held.run_id, project="default", epochs=None, limits=Limits()
    )


def _lose(session: Session, held: Held) -> None:
    assert held.claim is not None
    queue.retry_elsewhere(
        session=session, claim=held.claim, failure_kind=FailureKind.RESOURCES, error="OOM"
    )


def _reap(session: Session, held: Held) -> None:
    _expire(session, held.run_id)
    assert queue.reap_expired(session=session) == 1


def _finish(status: RunStatus) -> Callable[[Session, Held], None]:
    def finish(session: Session, held: Held) -> None:
        assert held.claim is not None
        queue.finish(session=session, claim=held.claim, status=status)

    return finish


def _hand_back(pruned: bool) -> Callable[[Session, Held], None]:
    def hand_back(session: Session, held: Held) -> None:
        assert held.claim is not None
        queue.hand_back(session=session, claim=held.claim, pruned=pruned)

    return hand_back


def _cancel(session: Session, held: Held) -> None:
    runs.cancel_run(session=session, run_id=held.run_id, project="default")


def _unservable(session: Session, held: Held) -> None:
    # The run asks for a GPU, and only a CPU worker lives.
    session.execute(update(Run).where(Run.id == held.run_id).values(device_request="cuda"))
    assert queue.fail_unservable(session=session, live_devices={"cpu"}) == 1


def _claimed(session: Session, _held: Held) -> None:
    _claim(session)


# (source, what happens, the run's status after, the run's max_attempts)
CASES: list[tuple[RunStatus, Callable[[Session, Held], None], RunStatus, int]] = [
    (Q, _claimed, R, 3),
    (Q, _cancel, X, 3),
    (Q, _unservable, F, 3),
    (R, _cancel, C, 3),
    (R, _finish(S), S, 3),
    (R, _finish(F), F, 3),
    (R, _lose, F, 1),
    (R, _reap, F, 1),
    (R, _hand_back(pruned=True), P, 3),
    (R, _hand_back(pruned=False), Q, 3),
    (R, _lose, Q, 3),
    (R, _reap, Q, 3),
    (C, _hand_back(pruned=False), X, 3),
    (C, _hand_back(pruned=True), X, 3),
    (C, _lose, X, 3),
    (C, _lose, X, 1),
    (C, _reap, X, 3),
    (C, _reap, X, 1),
    (C, _finish(S), S, 3),
    (C, _finish(F), F, 3),
    (X, _resume, Q, 3),
    (F, _resume, Q, 3),
    (P, _resume, Q, 3),
]


def _name(number: int, case: tuple[RunStatus, Callable[..., None], RunStatus, int]) -> str:
    source, action, target, attempts = case
    mover = action.__qualname__.split(".")[0].strip("_")
    return f"{number}-{source}-{mover}-{target}-of-{attempts}-attempts"


@pytest.mark.parametrize("case", CASES, ids=[_name(*numbered) for numbered in enumerate(CASES)])
def test_each_mover_makes_only_an_allowed_transition(
    session: Session, case: tuple[RunStatus, Callable[[Session, Held], None], RunStatus, int]
):
    source, action, target, max_attempts = case
    assert (source, target) in lifecycle.TRANSITIONS
    held = run_in(session, source, max_attempts)
    assert session.get(Run, held.run_id).status == source
    action(session, held)
    run = session.get(Run, held.run_id)
    session.refresh(run)
    assert run.status == target
    if source in (R, C) and target not in (R, C):
        # The attempt is over: nothing holds the run any more, and a queued run no worker.
        assert run.lease_expires_at is None
        assert target != Q or run.worker_id is None
    assert (run.finished_at is not None) == (target in (S, F, X, P))


def test_every_transition_is_driven_by_a_case():
    assert {(source, target) for source, _action, target, _n in CASES} == set(lifecycle.TRANSITIONS)


@pytest.mark.parametrize("status", [S, F, P])
def test_a_finished_run_cannot_be_cancelled(session: Session, status: RunStatus):
    held = run_in(session, status)
    with pytest.raises(runs.RunStateError, match="cannot be cancelled"):
        _cancel(session, held)


@pytest.mark.parametrize("status", [C, X])
def test_cancelling_again_changes_nothing(session: Session, status: RunStatus):
    held = run_in(session, status)
    assert runs.cancel_run(session=session, run_id=held.run_id, project="default").status == status


@pytest.mark.parametrize("status", [Q, R, C])
def test_only_a_stopped_run_resumes(session: Session, status: RunStatus):
    held = run_in(session, status)
    with pytest.raises(runs.RunStateError, match="only cancelled, failed or pruned runs"):
        _resume(session, held)


@pytest.mark.parametrize("status", [R, C])
def test_a_run_a_worker_executes_cannot_be_deleted(session: Session, status: RunStatus):
    held = run_in(session, status)
    with pytest.raises(runs.RunStateError, match="cancel it first"):
        runs.delete_run(session=session, run_id=held.run_id, project="default")


def test_a_lost_attempt_keeps_why_until_the_run_fails_for_it(session: Session):
    held = run_in(session, R, max_attempts=2)
    _lose(session, held)
    requeued = session.get(Run, held.run_id)
    session.refresh(requeued)
    assert (requeued.error, requeued.failure_kind, requeued.lost_attempts) == ("OOM", None, 1)
    held = Held(held.run_id, _claim(session))
    _reap(session, held)
    session.refresh(requeued)
    assert (requeued.status, requeued.failure_kind) == (F, FailureKind.WORKER_LOST)
    assert requeued.error == "the worker was lost on every one of the run's attempts (last: w1)"
