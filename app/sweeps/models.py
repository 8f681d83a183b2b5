"""Tables of a hyperparameter sweep: the sweep and one row per trial, each an ordinary run."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, UTCDateTime, utcnow


class SweepStatus(StrEnum):
    """Where a sweep is in its life."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Sweep(Base):
    """A search over run specs; its trials are runs, and the database holds all its state."""

    __tablename__ = "sweeps"
    __table_args__ = (
        Index("ix_sweeps_project_id", "project", "id"),
        Index("ix_sweeps_status", "status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"))
    status: Mapped[str] = mapped_column(String(16), default=SweepStatus.RUNNING)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # min(max_runs, the grid's size): the sweep ends once this many trials are final.
    total_trials: Mapped[int]
    best_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SweepTrial(Base):
    """One trial: the run it queued and the parameters Optuna proposed for it."""

    __tablename__ = "sweep_trials"

    sweep_id: Mapped[int] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(primary_key=True)
    # SET NULL: a deleted run leaves its trial, which then counts as failed.
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"), index=True
    )
    # The values put into the run spec, by dotted path.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The same as Optuna sees them (choices by index), and what its sampler and pruner
    # keep about the trial, so a study rebuilt from these rows decides as the live one would.
    sampler_params: Mapped[dict[str, Any]] = mapped_column(JSON)
    system_attrs: Mapped[dict[str, Any]] = mapped_column(JSON)
