"""Tables of a training run: the run (also the queue entry), its epochs, checkpoint and weights."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.artifacts.models import Artifact
from app.database import Base, UTCDateTime, utcnow


class RunStatus(StrEnum):
    """Where a run is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A sweep's pruner stopped it at an epoch boundary; it keeps its checkpoint.
    PRUNED = "pruned"


ACTIVE_STATUSES = (RunStatus.RUNNING, RunStatus.CANCELLING)
FINAL_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PRUNED)


class FailureKind(StrEnum):
    """Why a run failed."""

    INVALID_INPUT = "invalid_input"
    DIVERGED = "diverged"
    WORKER_LOST = "worker_lost"
    TIMEOUT = "timeout"
    RESOURCES = "resources"
    INTERNAL = "internal"


class Run(Base):
    """A training run; queued rows are the work queue that workers claim from."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status_id", "status", "id"),
        Index("ix_runs_status_lease", "status", "lease_expires_at"),
        UniqueConstraint("project", "idempotency_key"),
        # The fair claim counts each project's executing runs for every queued candidate.
        Index("ix_runs_project_status", "project", "status"),
        Index("ix_runs_project_name", "project", "name"),
        # Ids are never reused, so a cached model keyed by run id can never outlive its run.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    name: Mapped[str | None] = mapped_column(String(200))
    # SET NULL: a dataset deleted with force=true leaves its runs, which then fail to run.
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    task: Mapped[str] = mapped_column(String(16))
    device_request: Mapped[str] = mapped_column(String(32))
    device: Mapped[str | None] = mapped_column(String(32))
    # `local` or `ray`: what trained the run's latest attempt.
    executor: Mapped[str | None] = mapped_column(String(16))
    epochs_total: Mapped[int]
    epochs_done: Mapped[int] = mapped_column(default=0)
    # Unique per project: two teams may pick the same key.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # attempt is the fencing token: every claim bumps it, and every write a worker
    # makes for the run names the attempt it holds.
    attempt: Mapped[int] = mapped_column(default=0)
    lost_attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    failure_kind: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    estimation_error: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    @property
    def progress(self) -> dict[str, int]:
        """Epochs finished out of epochs asked for."""
        return {"epoch": self.epochs_done, "epochs": self.epochs_total}

    @property
    def tags(self) -> list[str]:
        """The tags the spec gave the run (`run_tags` indexes them for search)."""
        return list(self.spec.get("tags", []))


class RunTag(Base):
    """One tag of a run, so listings filter by tag with an index."""

    __tablename__ = "run_tags"
    __table_args__ = (Index("ix_run_tags_tag_run_id", "tag", "run_id"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class EventKind(StrEnum):
    """What a run event announces."""

    STATUS = "status"
    EPOCH = "epoch"


class RunEvent(Base):
    """A status a run entered or an epoch it committed; written only by database triggers.

    The triggers (migration 0006) write it in the transaction that made the change, so
    event ids order every change and a stream resumed after an id misses none.
    """

    __tablename__ = "run_events"
    __table_args__ = (
        Index("ix_run_events_run_id_id", "run_id", "id"),
        Index("ix_run_events_project_id", "project", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    project: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(16))
    # The epoch committed; for a status event, the epochs done when the status changed.
    epoch: Mapped[int | None]
    # The epoch row, not its number: a resumed attempt replaces rows past its checkpoint.
    epoch_id: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Epoch(Base):
    """One finished epoch of a run; (run_id, epoch) is unique so resumes cannot duplicate it."""

    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int]
    attempt: Mapped[int]
    train_loss: Mapped[float]
    val_loss: Mapped[float | None]
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    seconds: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    """The latest resumable training state of a run (safetensors tensors + JSON state).

    The tensors are an object in the artifact store; RESTRICT keeps it while named.
    """

    __tablename__ = "checkpoints"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int]
    epoch: Mapped[int]
    batch: Mapped[int]
    tensors_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"), index=True)
    tensors: Mapped[Artifact] = relationship(lazy="joined")
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Weights(Base):
    """The final learned weights of a run: a safetensors file in the artifact store."""

    __tablename__ = "weights"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"), index=True)
    artifact: Mapped[Artifact] = relationship(lazy="joined")
    size_bytes: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
