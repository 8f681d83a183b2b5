"""The runs table as a work queue: claim, lease, fence, finish, hand back, reap, and the
worker registry. This module is the only code that moves a run through its queue states
on a worker's behalf.

Every write a worker makes for a run goes through `fence` in the same transaction: it names
the attempt the worker claimed, and once that attempt's lease has run out (whether or not
another worker has claimed the run since) it matches no row and raises FencedError, so a
stale worker can never change the run.

Workers learn of queued runs from PostgreSQL's NOTIFY, which a trigger on the runs table
sends whenever a run becomes queued (migration 0004), or from polling.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.database import UTCDateTime, rows_matched, utcnow
from app.projects.models import Project
from app.runs import lifecycle
from app.runs.models import ACTIVE_STATUSES, FailureKind, Run, RunStatus
from app.worker.models import WorkerRecord

NOTIFY_CHANNEL = "fitserve_runs"
WORKER_RECORD_RETENTION = timedelta(days=1)


class FencedError(RuntimeError):
    """The run is no longer held by this attempt; the write was refused."""


@dataclass(frozen=True)
class Claim:
    """A run this worker now holds, and the attempt number that fences its writes."""

    run_id: int
    attempt: int
    spec: dict[str, Any]
    epochs_total: int


def servable_requests(device: str) -> list[str]:
    """The `device` values of runs that a worker on this device may take."""
    if device == "cpu":
        return ["auto", "cpu"]
    return ["auto", "cuda", device] if device != "cuda" else ["auto", "cuda", "cuda:0"]


def claim_next(
    *,
    session: Session,
    worker_id: str,
    device: str,
    lease_seconds: float,
    executor: str = "local",
) -> Claim | None:
    """Take a queued run this device can serve, or None when there is none.

    Fair across projects: the run comes from the project with the fewest runs executing
    (the oldest queued run among those), so one project's backlog never holds up another's;
    a project at its `max_running_runs` quota waits.
    """
    now = utcnow()
    executing = aliased(Run)
    executing_in_project = (
        select(func.count(executing.id))
        .where(executing.project == Run.project, executing.status.in_(ACTIVE_STATUSES))
        .correlate(Run)
        .scalar_subquery()
    )
    candidate = session.execute(
        select(Run.id, Run.project, Project.max_running_runs)
        .join(Project, Project.name == Run.project)
        .where(
            Run.status == RunStatus.QUEUED,
            Run.device_request.in_(servable_requests(device)),
            or_(
                Project.max_running_runs.is_(None),
                executing_in_project < Project.max_running_runs,
            ),
        )
        .order_by(executing_in_project, Run.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=Run)
    ).one_or_none()
    if candidate is None:
        return None
    if candidate.max_running_runs is not None and not _room_to_run(
        session, candidate.project, candidate.max_running_runs
    ):
        return None
    row = session.execute(
        update(Run)
        .where(Run.id == candidate.id, Run.status == RunStatus.QUEUED)
        .values(
            status=RunStatus.RUNNING,
            attempt=Run.attempt + 1,
            worker_id=worker_id,
            device=device,
            executor=executor,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Run.started_at, literal(now, UTCDateTime)),
        )
        .returning(Run.id, Run.attempt, Run.spec, Run.epochs_total)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    session.execute(
        update(WorkerRecord).where(WorkerRecord.id == worker_id).values(current_run_id=row.id)
    )
    return Claim(run_id=row.id, attempt=row.attempt, spec=row.spec, epochs_total=row.epochs_total)


def _room_to_run(session: Session, project: str, max_running_runs: int) -> bool:
    """Whether the project may start another run, counted under its row lock.

    On PostgreSQL two workers could otherwise both see one slot left and both claim; the
    lock makes the second wait for the first to commit, then count its run.
    """
    session.execute(select(Project.name).where(Project.name == project).with_for_update())
    executing = session.scalar(
        select(func.count(Run.id)).where(Run.project == project, Run.status.in_(ACTIVE_STATUSES))
    )
    return (executing or 0) < max_running_runs


def fence(*, session: Session, claim: Claim, **values: Any) -> str:
    """Check that the claim still holds the run, setting `values`; returns the run's status.

    The claim holds the run while its attempt is the run's current one and its lease has
    not run out, even if no other worker has reaped the run yet. Raises FencedError when it
    does not; call it first in any transaction that writes for the claim, so that nothing
    else in it commits for a stale attempt.
    """
    run_id, attempt = claim.run_id, claim.attempt
    status = session.execute(
        update(Run)
        .where(
            Run.id == run_id,
            Run.attempt == attempt,
            Run.status.in_(ACTIVE_STATUSES),
            Run.lease_expires_at > utcnow(),
        )
        # With nothing to set, the row is still locked and matched: a pure check.
        .values(**(values or {"attempt": Run.attempt}))
        .returning(Run.status)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if status is None:
        raise FencedError(
            f"run {run_id} is no longer held by attempt {attempt} (or its lease ran out)"
        )
    return status


def renew_lease(*, session: Session, claim: Claim, lease_seconds: float) -> str:
    """Extend the lease; returns the run's status (`cancelling` asks the worker to stop)."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    return fence(session=session, claim=claim, lease_expires_at=expires)


def finish(
    *,
    session: Session,
    claim: Claim,
    status: RunStatus,
    failure_kind: FailureKind | None = None,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
    estimation_error: dict[str, Any] | None = None,
) -> None:
    """End the run in a final status (fenced)."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "lease_expires_at": None,
        "failure_kind": failure_kind,
        "error": error,
    }
    if metrics is not None:
        values["metrics"] = metrics
    if estimation_error is not None:
        values["estimation_error"] = estimation_error
    fence(session=session, claim=claim, **values)


def hand_back(*, session: Session, claim: Claim, pruned: bool = False) -> str:
    """Return the run to the queue without counting a lost attempt (a graceful stop), or end
    it pruned; a run being cancelled ends cancelled. Returns the run's new status."""
    then = RunStatus.PRUNED if pruned else RunStatus.QUEUED
    # The run's own error, if an earlier attempt left one, stays while it waits again.
    return fence(
        session=session,
        claim=claim,
        **lifecycle.end_of_attempt(now=utcnow(), then=then, error=Run.error),
    )


def retry_elsewhere(
    *, session: Session, claim: Claim, failure_kind: FailureKind, error: str
) -> str:
    """Give up this attempt for a reason of the machine's: queue the run again, counting a
    lost attempt, or fail it with `failure_kind` once it has used up its attempts.

    Returns the run's new status.
    """
    return fence(
        session=session,
        claim=claim,
        **lifecycle.end_of_attempt(now=utcnow(), lost=failure_kind, error=error),
    )


def reap_expired(*, session: Session, now: datetime | None = None) -> int:
    """Requeue runs whose lease ran out, or fail them once max_attempts workers were lost."""
    worker_lost = (
        literal("the worker was lost on every one of the run's attempts (last: ")
        + func.coalesce(Run.worker_id, "unknown")
        + literal(")")
    )
    now = now or utcnow()
    result = session.execute(
        update(Run)
        .where(Run.status.in_(ACTIVE_STATUSES), Run.lease_expires_at < now)
        .values(
            **lifecycle.end_of_attempt(
                now=now, lost=FailureKind.WORKER_LOST, error_if_failed=worker_lost
            )
        )
        .execution_options(synchronize_session=False)
    )
    return rows_matched(result)


def expire_leases_of(*, session: Session, worker_id: str) -> None:
    """Let the reaper take a dead worker's runs now instead of when their lease would end."""
    session.execute(
        update(Run)
        .where(Run.worker_id == worker_id, Run.status.in_(ACTIVE_STATUSES))
        .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        .execution_options(synchronize_session=False)
    )


def fail_unservable(*, session: Session, live_devices: set[str]) -> int:
    """Fail queued CUDA runs that no live worker can serve, instead of letting them wait forever."""
    failed = 0
    requests = session.scalars(
        select(Run.device_request)
        .where(Run.status == RunStatus.QUEUED, Run.device_request.not_in(("auto", "cpu")))
        .distinct()
    ).all()
    for request in requests:
        if any(request in servable_requests(device) for device in live_devices):
            continue
        available = ", ".join(sorted(live_devices)) or "none"
        failed += rows_matched(
            session.execute(
                update(Run)
                .where(Run.status == RunStatus.QUEUED, Run.device_request == request)
                .values(
                    status=RunStatus.FAILED,
                    failure_kind=FailureKind.INVALID_INPUT,
                    error=f"device {request!r} was requested but no worker has it "
                    f"(worker devices: {available})",
                    finished_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
        )
    return failed


def register_worker(*, session: Session, record: WorkerRecord) -> None:
    """Add or refresh a worker's row."""
    session.merge(record)


def worker_heartbeat(*, session: Session, worker_id: str, current_run_id: int | None) -> bool:
    """Mark the worker alive and say what it runs; False if its row is gone (re-register)."""
    # A worker retired while it could not reach the database is alive again once it can.
    result = session.execute(
        update(WorkerRecord)
        .where(WorkerRecord.id == worker_id)
        .values(heartbeat_at=utcnow(), current_run_id=current_run_id, stopped_at=None)
    )
    return rows_matched(result) == 1


def unregister_worker(*, session: Session, worker_id: str) -> None:
    """Mark the worker stopped."""
    session.execute(
        update(WorkerRecord)
        .where(WorkerRecord.id == worker_id)
        .values(stopped_at=utcnow(), current_run_id=None)
    )


def retire_silent_workers(*, session: Session, silent_since: datetime) -> None:
    """Mark stopped the workers that have not heartbeated since the given time (killed, lost)."""
    session.execute(
        update(WorkerRecord)
        .where(WorkerRecord.stopped_at.is_(None), WorkerRecord.heartbeat_at < silent_since)
        .values(stopped_at=utcnow(), current_run_id=None)
    )
    session.execute(
        delete(WorkerRecord).where(WorkerRecord.stopped_at < utcnow() - WORKER_RECORD_RETENTION)
    )


def live_worker_devices(*, session: Session, since: datetime) -> set[str]:
    """Devices of workers that have heartbeated since the given time and not stopped."""
    return set(
        session.scalars(
            select(WorkerRecord.device).where(
                WorkerRecord.heartbeat_at >= since, WorkerRecord.stopped_at.is_(None)
            )
        ).all()
    )


def heartbeat_node(*, session: Session, record: WorkerRecord) -> None:
    """Mark a Ray node alive, adding its row the first time; its current run is kept."""
    updated = session.execute(
        update(WorkerRecord)
        .where(WorkerRecord.id == record.id)
        .values(heartbeat_at=utcnow(), stopped_at=None, host=record.host, device=record.device)
    )
    if rows_matched(updated) == 0:
        session.add(record)
