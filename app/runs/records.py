"""What a worker writes for a run: epoch rows, the checkpoint and the final weights.

Each function writes in the caller's transaction; the worker opens it through the queue's
fence, so a write by an attempt that no longer holds the run never commits. Checkpoint
tensors and weights are objects in the artifact store: the caller stages them before the
transaction, and releases the ones they replace after it commits.
"""

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.artifacts import service as artifacts
from app.artifacts.store import ArtifactStore, StagedObject
from app.database import utcnow
from app.runs.models import Checkpoint, Epoch, Weights
from app.training.evaluation import EpochReport
from app.training.serialization import CheckpointBlob


def load_checkpoint(
    *, session: Session, store: ArtifactStore, run_id: int
) -> CheckpointBlob | None:
    """The run's latest checkpoint, if it has one."""
    checkpoint = session.get(Checkpoint, run_id)
    if checkpoint is None:
        return None
    return CheckpointBlob(tensors=store.read_bytes(checkpoint.tensors.uri), state=checkpoint.state)


def drop_epochs_after(*, session: Session, run_id: int, epoch: int) -> None:
    """Forget the epoch rows past a checkpoint that an attempt resumes from; they are redone."""
    session.execute(delete(Epoch).where(Epoch.run_id == run_id, Epoch.epoch > epoch))


def save_checkpoint(
    *,
    session: Session,
    store: ArtifactStore,
    run_id: int,
    attempt: int,
    state: dict[str, Any],
    tensors: StagedObject,
) -> str | None:
    """Replace the run's checkpoint; returns the digest of the tensors it replaced."""
    artifact = artifacts.record(session=session, store=store, staged=tensors)
    previous = session.scalar(select(Checkpoint.tensors_sha256).where(Checkpoint.run_id == run_id))
    progress = state["progress"]
    values = {
        "attempt": attempt,
        "epoch": progress["epoch"],
        "batch": progress["batch"],
        "tensors_sha256": artifact.sha256,
        "state": state,
        "created_at": utcnow(),
    }
    if previous is None:
        session.add(Checkpoint(run_id=run_id, **values))
        session.flush()
        return None
    session.execute(
        update(Checkpoint)
        .where(Checkpoint.run_id == run_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return previous if previous != artifact.sha256 else None


def add_epoch(*, session: Session, run_id: int, attempt: int, report: EpochReport) -> None:
    """Store one finished epoch; (run, epoch) is unique, so a resume cannot add it twice."""
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


def save_weights(
    *, session: Session, store: ArtifactStore, run_id: int, weights: StagedObject
) -> str | None:
    """Store the run's final weights, replacing any from an earlier attempt (returned)."""
    artifact = artifacts.record(session=session, store=store, staged=weights)
    previous = session.scalar(select(Weights.sha256).where(Weights.run_id == run_id))
    session.execute(delete(Weights).where(Weights.run_id == run_id))
    session.add(Weights(run_id=run_id, sha256=artifact.sha256, size_bytes=weights.size_bytes))
    session.flush()
    return previous if previous != artifact.sha256 else None
