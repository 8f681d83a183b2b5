"""What a worker writes for a run: epoch rows, the checkpoint and the final weights.

Each function writes in the caller's transaction; the worker opens it through the queue's
fence, so a write by an attempt that no longer holds the run never commits.
"""

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from app.database import utcnow
from app.runs.models import Checkpoint, Epoch, Weights
from app.training.artifacts import CheckpointBlob, WeightsFile
from app.training.engine import EpochReport


def load_checkpoint(*, session: Session, run_id: int) -> CheckpointBlob | None:
    """The run's latest checkpoint, if it has one."""
    checkpoint = session.get(Checkpoint, run_id)
    if checkpoint is None:
        return None
    return CheckpointBlob(tensors=checkpoint.tensors, state=checkpoint.state)


def drop_epochs_after(*, session: Session, run_id: int, epoch: int) -> None:
    """Forget the epoch rows past a checkpoint that an attempt resumes from; they are redone."""
    session.execute(delete(Epoch).where(Epoch.run_id == run_id, Epoch.epoch > epoch))


def save_checkpoint(*, session: Session, run_id: int, attempt: int, blob: CheckpointBlob) -> None:
    """Replace the run's checkpoint."""
    progress = blob.state["progress"]
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


def save_weights(*, session: Session, run_id: int, weights: WeightsFile) -> None:
    """Store the run's final weights, replacing any from an earlier attempt."""
    session.execute(delete(Weights).where(Weights.run_id == run_id))
    session.add(
        Weights(
            run_id=run_id, data=weights.data, sha256=weights.sha256, size_bytes=len(weights.data)
        )
    )
    session.flush()
