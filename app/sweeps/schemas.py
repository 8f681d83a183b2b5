"""Request and response bodies of the sweeps API."""

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.training.spec import MetricName, RunRequest

MAX_SPACE = 20
MAX_CHOICES = 100
SpacePath = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        max_length=200,
        description="A dotted path into the run spec, e.g. `optimizer.lr`.",
    ),
]


class Strict(BaseModel):
    """Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class FloatRange(Strict):
    """A float between low and high; `loguniform` samples its logarithm uniformly."""

    type: Literal["uniform", "loguniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


class IntRange(Strict):
    """An integer from low to high inclusive, in steps."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("a log int range needs low > 0 and step 1")
        return self


class Choice(Strict):
    """One of the values (any JSON: numbers, strings, lists such as hidden layer widths)."""

    type: Literal["choice"]
    values: list[Any] = Field(min_length=1, max_length=MAX_CHOICES)


SpaceEntry = (
    Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]
    | Annotated[list[Any], Field(min_length=1, max_length=MAX_CHOICES)]
)


class Strategy(Strict):
    """How trials are proposed: every combination, at random, or by Optuna's TPE."""

    type: Literal["grid", "random", "tpe"] = "random"


class Pruner(Strict):
    """Which of Optuna's pruners stops unpromising trials at epoch boundaries."""

    type: Literal["none", "median", "asha"] = "none"
    min_trials: int = Field(
        3, ge=1, description="median: trials that must have finished before any is pruned."
    )
    warmup_epochs: int = Field(0, ge=0, description="median: epochs never pruned.")
    min_resource: int = Field(1, ge=1, description="asha: epochs before the first rung.")
    reduction_factor: int = Field(3, ge=2, description="asha: 1/n of the trials go up a rung.")


class Objective(Strict):
    """The metric each trial is judged by: its final value, or per epoch for the pruner."""

    metric: MetricName = "val_loss"
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="Default: maximize r2 and accuracy, minimize the rest."
    )


class RegisterBest(Strict):
    """Register the best trial's run as a version of a model when the sweep ends."""

    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    alias: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class SweepRequest(Strict):
    """A sweep: a base run spec, the space to search, and how."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "base": {
                        "dataset": {"type": "synthetic_classification", "n_samples": 600},
                        "model": {"type": "mlp", "hidden": [16]},
                        "optimizer": {"type": "adam", "lr": 0.01},
                        "epochs": 9,
                        "batch_size": 32,
                        "validation_split": 0.2,
                    },
                    "space": {
                        "optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 0.1},
                        "model.hidden": {"type": "choice", "values": [[16], [64, 64]]},
                    },
                    "strategy": {"type": "random"},
                    "pruner": {"type": "asha"},
                    "objective": {"metric": "val_loss", "direction": "minimize"},
                    "max_runs": 12,
                    "max_concurrent": 2,
                    "seed": 0,
                }
            ]
        },
    )

    base: RunRequest = Field(description="The run spec every trial starts from.")
    space: dict[SpacePath, SpaceEntry] = Field(
        min_length=1,
        max_length=MAX_SPACE,
        description="By dotted path: `uniform`, `loguniform`, `int`, `choice`, or a list of "
        "values (the grid strategy takes lists and choices only).",
    )
    strategy: Strategy = Field(default_factory=Strategy)
    pruner: Pruner = Field(default_factory=Pruner)
    objective: Objective = Field(default_factory=Objective)
    max_runs: int = Field(20, ge=1, le=1000, description="Trials at most.")
    max_concurrent: int = Field(
        4, ge=1, le=64, description="Trials queued or running at once, at most."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="The same seed proposes the same trials.")
    register_best: RegisterBest | None = None


class TrialRead(BaseModel):
    """One trial of a sweep."""

    number: int
    run_id: int | None
    params: dict[str, Any]
    status: str = Field(description="The run's status (`deleted` when the run is gone).")
    objective: float | None = Field(description="The run's final value of the objective.")


class SweepRead(BaseModel):
    """A sweep and its trials."""

    id: int
    status: str
    spec: dict[str, Any]
    total_trials: int = Field(description="Trials the sweep runs: max_runs, or the grid's size.")
    trials: list[TrialRead]
    best_run_id: int | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class SweepPage(BaseModel):
    """One page of sweeps, newest first (without their trials)."""

    items: list[SweepRead]
    next_cursor: str | None
