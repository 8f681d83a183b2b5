"""Response bodies of the fitserve API as pydantic models.

They mirror the API's response schemas (a contract test checks each field against the live
`/openapi.json`); unknown fields are kept, so a newer server does not break an older client.
Statuses and kinds are plain strings for the same reason.
"""

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "pruned"})

Item = TypeVar("Item")


class APIModel(BaseModel):
    """The base of every response model: extra fields allowed and kept."""

    model_config = ConfigDict(extra="allow")


class Progress(APIModel):
    """Epochs finished out of epochs asked for."""

    epoch: int
    epochs: int


class Run(APIModel):
    """A training run (`RunRead`)."""

    id: int
    status: str
    spec: dict[str, Any]
    task: str
    device_request: str
    device: str | None = None
    executor: str | None = None
    progress: Progress
    created_at: datetime
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int
    lost_attempts: int
    max_attempts: int
    worker_id: str | None = None
    failure_kind: str | None = None
    error: str | None = None
    metrics: dict[str, Any] | None = None
    estimation_error: dict[str, Any] | None = None
    name: str | None = None
    tags: list[str] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether the run is in a final status."""
        return self.status in FINAL_STATUSES


class Page(APIModel, Generic[Item]):
    """One page of a listing, newest first (`RunPage`, `DatasetPage`)."""

    items: list[Item]
    next_cursor: str | None = None


class Epoch(APIModel):
    """One finished epoch (`EpochRead`)."""

    epoch: int
    train_loss: float
    val_loss: float | None = None
    metrics: dict[str, float]
    seconds: float
    attempt: int


class Tensor(APIModel):
    """One named tensor of the learned weights (`TensorRead`)."""

    shape: list[int]
    dtype: str
    values: Any


class Weights(APIModel):
    """A run's learned weights as JSON (`WeightsRead`)."""

    run_id: int
    sha256: str
    size_bytes: int
    tensors: dict[str, Tensor]


class Comparison(APIModel):
    """Runs side by side, and the spec paths where they differ (one value per run)."""

    runs: list[Run]
    spec_differences: dict[str, list[Any]]
    metrics: dict[str, list[Any]] = Field(default_factory=dict)


class Trial(APIModel):
    """One trial of a sweep: the run it queued (`TrialRead`)."""

    number: int
    run_id: int | None = None
    params: dict[str, Any]
    status: str
    objective: float | None = None


class Sweep(APIModel):
    """A hyperparameter sweep and its trials (`SweepRead`)."""

    id: int
    status: str
    spec: dict[str, Any]
    total_trials: int
    trials: list[Trial] = Field(default_factory=list)
    best_run_id: int | None = None
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """Whether the sweep has ended (succeeded, failed or cancelled)."""
        return self.status != "running"


class DatasetSummary(APIModel):
    """A dataset as listings show it (`DatasetSummary`)."""

    id: int
    name: str
    sha256: str
    format: str
    size_bytes: int
    task: str
    target: str
    features: list[str]
    missing: str
    n_rows: int
    created_at: datetime


class StoredTable(APIModel):
    """Where a dataset's table is stored: an Arrow IPC file in the artifact store."""

    uri: str
    sha256: str
    size_bytes: int


class Dataset(DatasetSummary):
    """A dataset with its schema, statistics, first rows and stored table (`DatasetRead`)."""

    artifact: StoredTable
    columns: list[dict[str, str]]
    stats: dict[str, dict[str, Any]]
    preview: list[dict[str, Any]]


class ModelVersion(APIModel):
    """A version just registered (`VersionRead`)."""

    name: str
    version: int
    run_id: int
    weights_sha256: str
    created_at: datetime


class ModelVersionDetail(APIModel):
    """A version with its run's task, final metrics and aliases (`VersionDetail`)."""

    version: int
    run_id: int
    weights_sha256: str
    created_at: datetime
    task: str
    metrics: dict[str, Any] | None = None
    aliases: list[str]


class ModelSummary(APIModel):
    """A model's name, latest version and aliases (`ModelSummary`)."""

    name: str
    created_at: datetime
    latest_version: int | None = None
    aliases: dict[str, int]


class Model(ModelSummary):
    """A model with every version, oldest first (`ModelRead`)."""

    versions: list[ModelVersionDetail]


class Alias(APIModel):
    """Where an alias points (`AliasRead`)."""

    name: str
    alias: str
    version: int
    run_id: int


class Prediction(APIModel):
    """Predictions, with classes and probabilities for classification (`PredictResponse`)."""

    run_id: int
    weights_sha256: str
    model: str | None = None
    version: int | None = None
    predictions: list[Any]
    classes: list[Any] | None = None
    probabilities: list[list[float]] | None = None


class Event(APIModel):
    """One message of a run's event stream: `status` or `epoch`, with its JSON data."""

    id: int
    type: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        """Whether this is the run's last event: a status event with a final status."""
        return self.type == "status" and self.data.get("status") in FINAL_STATUSES
