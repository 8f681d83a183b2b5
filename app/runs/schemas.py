"""Request and response bodies of the runs API."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.runs.models import FailureKind, RunStatus


class Progress(BaseModel):
    """Epochs finished out of epochs asked for."""

    epoch: int
    epochs: int


class RunRead(BaseModel):
    """A run as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str | None
    tags: list[str]
    status: RunStatus
    spec: dict[str, Any] = Field(description="The run spec as stored, defaults filled in.")
    task: str
    device_request: str = Field(description="The device the spec asked for.")
    device: str | None = Field(description="The device the run actually trained on.")
    executor: str | None = Field(
        description="What trained the latest attempt: `local` (a fitserve worker) or `ray`."
    )
    progress: Progress
    created_at: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int = Field(description="How many times a worker has claimed this run.")
    lost_attempts: int = Field(description="Attempts whose worker died or lost its lease.")
    max_attempts: int
    worker_id: str | None
    failure_kind: FailureKind | None
    error: str | None
    metrics: dict[str, Any] | None = Field(
        description="The last epoch's losses and metrics (the best epoch's when early stopping "
        "restored its weights), with best_epoch and early_stopped_at under early stopping."
    )
    estimation_error: dict[str, Any] | None = Field(
        description="For synthetic linear data: truth minus learned, for w and b (as d2l prints)."
    )


class RunPage(BaseModel):
    """One page of runs, newest first."""

    items: list[RunRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class RunComparison(BaseModel):
    """Runs side by side."""

    runs: list[RunRead] = Field(description="The runs in the order asked, as listings show them.")
    spec_differences: dict[str, list[Any]] = Field(
        description="Each spec field (a dotted path) whose values differ: one value per run."
    )
    metrics: dict[str, list[Any]] = Field(
        description="Each final metric any of the runs has: one value per run (null: none)."
    )


class EpochRead(BaseModel):
    """One finished epoch."""

    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float = Field(description="Loss over all training rows after the epoch (as d2l).")
    val_loss: float | None
    metrics: dict[str, float]
    seconds: float
    attempt: int


class TensorRead(BaseModel):
    """One named tensor of the learned weights."""

    shape: list[int]
    dtype: str
    values: Any


class WeightsRead(BaseModel):
    """The learned weights as JSON."""

    run_id: int
    sha256: str
    size_bytes: int
    tensors: dict[str, TensorRead]


class ResumeRequest(BaseModel):
    """Continue a cancelled or failed run from its last checkpoint."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(
        None, ge=1, description="New total number of epochs (default: the run's own)."
    )
