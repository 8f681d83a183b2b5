"""The runs table as a queue: claim, lease, fenced writes, hand-back and reaping.

Every write a worker makes for a run names the attempt it claimed; a write whose attempt
is no longer the run's current one (its lease expired and another worker claimed the run)
matches no row and raises FencedError, so a stale worker can never change the run.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, literal, select, text, update
from sqlalchemy.orm import Session

from app.database import UTCDateTime, utcnow
from app.runs.models import ACTIVE_STATUSES, Checkpoint, Epoch, FailureKind, Run, RunStatus, Weights
from app.training.artifacts import CheckpointBlob, WeightsFile
from app.training.engine import EpochReport
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


def announce(session: Session) -> None:
    """Tell listening workers that a run is queued; PostgreSQL delivers it on commit."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})


def servable_requests(device: str) -> list[str]:
    """The `device` values of runs that a worker on this device may take."""
    if device == "cpu":
        return ["auto", "cpu"]
    return ["auto", "cuda", device] if device != "cuda" else ["auto", "cuda", "cuda:0"]


def claim_next(
    *, session: Session, worker_id: str, device: str, lease_seconds: float
) -> Claim | None:
    """Take the oldest queued run this device can serve, or None when there is none."""
    now = utcnow()
    next_id = (
        select(Run.id)
        .where(Run.status == RunStatus.QUEUED, Run.device_request.in_(servable_requests(device)))
        .order_by(Run.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    row = session.execute(
        update(Run)
        .where(Run.id == next_id, Run.status == RunStatus.QUEUED)
        .values(
            status=RunStatus.RUNNING,
            attempt=Run.attempt + 1,
            worker_id=worker_id,
            device=device,
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


def _fenced_update(session: Session, run_id: int, attempt: int, **values: Any) -> str:
    status = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.attempt == attempt, Run.status.in_(ACTIVE_STATUSES))
        .values(**values)
        .returning(Run.status)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if status is None:
        raise FencedError(f"run {run_id} is no longer held by attempt {attempt}")
    return status


def renew_lease(*, session: Session, run_id: int, attempt: int, lease_seconds: float) -> str:
    """Extend the lease; returns the run's status (`cancelling` asks the worker to stop)."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    return _fenced_update(session, run_id, attempt, lease_expires_at=expires)


def load_checkpoint(*, session: Session, run_id: int) -> CheckpointBlob | None:
    """The run's latest checkpoint, if it has one."""
    checkpoint = session.get(Checkpoint, run_id)
    if checkpoint is None:
        return None
    return CheckpointBlob(tensors=checkpoint.tensors, state=checkpoint.state)


def begin_attempt(*, session: Session, run_id: int, attempt: int, resume_epoch: int) -> None:
    """Drop epoch rows past the checkpoint this attempt resumes from; they will be redone."""
    _fenced_update(session, run_id, attempt, epochs_done=resume_epoch)
    session.execute(delete(Epoch).where(Epoch.run_id == run_id, Epoch.epoch > resume_epoch))


def save_checkpoint(*, session: Session, run_id: int, attempt: int, blob: CheckpointBlob) -> None:
    """Replace the run's checkpoint (fenced)."""
    progress = blob.state["progress"]
    _fenced_update(session, run_id, attempt, epochs_done=progress["epoch"])
    values = {
        "attempt": attempt,
        "epoch": progress["epoch"],
        "batch": progress["batch"],
        "tensors": blob.tensors,
        "state": blob.state,
        "created_at": utcnow(),
    }
    updated = session.execute(
        update(Checkpoint).where(Checkpoint.run_id == run_id).values(**values)
    ).rowcount
    if updated == 0:
        session.add(Checkpoint(run_id=run_id, **values))
        session.flush()


def record_epoch(
    *,
    session: Session,
    run_id: int,
    attempt: int,
    report: EpochReport,
    checkpoint: CheckpointBlob | None,
) -> str:
    """Store one epoch row, and its checkpoint when due, in the caller's transaction (fenced)."""
    status = _fenced_update(session, run_id, attempt, epochs_done=report.epoch)
    session.add(
        Epoch(
            run_id=run_id,
            epoch=report.epoch,
            attempt=attempt,
            train_loss=report.train_loss,
            val_loss=report.val_loss,
            metrics=report.metrics,
            seconds=report.seconds,
        )
    )
    session.flush()
    if checkpoint is not None:
        save_checkpoint(session=session, run_id=run_id, attempt=attempt, blob=checkpoint)
    return status


def finish(
    *,
    session: Session,
    run_id: int,
    attempt: int,
    status: RunStatus,
    failure_kind: FailureKind | None = None,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
    estimation_error: dict[str, Any] | None = None,
    weights: WeightsFile | None = None,
) -> None:
    """End the run in a final status (fenced); stores the weights when given."""
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
    _fenced_update(session, run_id, attempt, **values)
    if weights is not None:
        session.execute(delete(Weights).where(Weights.run_id == run_id))
        session.add(
            Weights(
                run_id=run_id,
                data=weights.data,
                sha256=weights.sha256,
                size_bytes=len(weights.data),
            )
        )
        session.flush()


def hand_back(*, session: Session, run_id: int, attempt: int) -> None:
    """Return a run to the queue without counting a lost attempt (graceful shutdown)."""
    status = session.execute(select(Run.status).where(Run.id == run_id)).scalar_one_or_none()
    if status == RunStatus.CANCELLING:
        finish(session=session, run_id=run_id, attempt=attempt, status=RunStatus.CANCELLED)
        return
    _fenced_update(
        session,
        run_id,
        attempt,
        status=RunStatus.QUEUED,
        queued_at=utcnow(),
        worker_id=None,
        lease_expires_at=None,
    )
    announce(session)


def reap_expired(*, session: Session, now: datetime | None = None) -> int:
    """Requeue runs whose lease ran out, or fail them once max_attempts workers were lost."""
    now = now or utcnow()
    lost = Run.lost_attempts + 1
    exhausted = lost >= Run.max_attempts
    result = session.execute(
        update(Run)
        .where(Run.status.in_(ACTIVE_STATUSES), Run.lease_expires_at < now)
        .values(
            status=case(
                (Run.status == RunStatus.CANCELLING, RunStatus.CANCELLED),
                (exhausted, RunStatus.FAILED),
                else_=RunStatus.QUEUED,
            ),
            lost_attempts=lost,
            failure_kind=case(
                (Run.status == RunStatus.CANCELLING, None),
                (exhausted, FailureKind.WORKER_LOST),
                else_=None,
            ),
            error=case(
                (
                    (Run.status != RunStatus.CANCELLING) & exhausted,
                    literal("the worker was lost on every one of the run's attempts (last: ")
                    + func.coalesce(Run.worker_id, "unknown")
                    + literal(")"),
                ),
                else_=None,
            ),
            finished_at=case((exhausted | (Run.status == RunStatus.CANCELLING), now), else_=None),
            queued_at=case((exhausted, Run.queued_at), else_=now),
            worker_id=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount:
        announce(session)
    return result.rowcount


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
        failed += session.execute(
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
        ).rowcount
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
    return result.rowcount == 1


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
