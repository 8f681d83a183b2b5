"""The run spec: what to train on, what to train, and how; pure pydantic, used by API and worker."""

from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.errors import InvalidInputError
from app.ids import MAX_ID

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Label = Annotated[int | FiniteFloat | str, Field(union_mode="smart")]


class StrictModel(BaseModel):
    """Refuses unknown fields, so a typo is an error rather than a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")


class SyntheticLinearDataset(StrictModel):
    """d2l's generator: X ~ N(0, 1), y = Xw + b + noise * N(0, 1)."""

    type: Literal["synthetic_linear"] = "synthetic_linear"
    n_samples: int = Field(1000, ge=2, description="Number of rows to generate.")
    true_w: list[FiniteFloat] = Field(
        [2.0, -3.4], min_length=1, description="True weights; their count is the feature count."
    )
    true_b: FiniteFloat = Field(4.2, description="True bias.")
    noise: FiniteFloat = Field(0.01, ge=0, description="Standard deviation of the label noise.")
    seed: int = Field(0, description="Seed of the generator; the same seed gives the same data.")


class SyntheticClassificationDataset(StrictModel):
    """Gaussian blobs: one centre per class, points scattered around it."""

    type: Literal["synthetic_classification"] = "synthetic_classification"
    n_samples: int = Field(600, ge=2, description="Number of rows to generate.")
    n_features: int = Field(4, ge=1, description="Number of features.")
    n_classes: int = Field(3, ge=2, description="Number of classes (labels 0..n_classes-1).")
    spread: FiniteFloat = Field(1.0, gt=0, description="Standard deviation around each centre.")
    seed: int = Field(0, description="Seed of the generator.")


class InlineDataset(StrictModel):
    """Rows sent in the request itself."""

    type: Literal["inline"] = "inline"
    features: list[list[FiniteFloat]] = Field(
        min_length=2, description="One list of numbers per row; every row the same length."
    )
    targets: list[Label] = Field(
        description="One target per row: a number for regression, a number or string label "
        "for classification."
    )

    @model_validator(mode="after")
    def _rectangular(self) -> Self:
        width = len(self.features[0])
        if width == 0:
            raise ValueError("features row 0 is empty; each row needs at least one value")
        for index, row in enumerate(self.features):
            if len(row) != width:
                raise ValueError(
                    f"features row {index} has {len(row)} values but row 0 has {width}; "
                    "every row needs the same number of features"
                )
        if len(self.targets) != len(self.features):
            raise ValueError(
                f"targets has {len(self.targets)} values but features has "
                f"{len(self.features)} rows; give one target per row"
            )
        return self


class DatasetRef(StrictModel):
    """A dataset stored with POST /datasets, by id; its task must match the run's."""

    type: Literal["dataset"] = "dataset"
    id: int = Field(ge=1, le=MAX_ID, description="The dataset's id.")
    target: str = Field(description="The dataset's target column.")
    features: list[str] | None = Field(
        None, min_length=1, description="Feature columns in model order (default: the dataset's)."
    )


DatasetSpec = Annotated[
    SyntheticLinearDataset | SyntheticClassificationDataset | InlineDataset | DatasetRef,
    Field(discriminator="type"),
]


class LinearModel(StrictModel):
    """Linear regression, or softmax regression when the task is classification."""

    type: Literal["linear"] = "linear"


class MLPModel(StrictModel):
    """A multilayer perceptron: hidden layers, each followed by the activation and dropout."""

    type: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        [64, 64], min_length=1, description="Width of each hidden layer."
    )
    activation: Literal["relu", "tanh", "gelu", "sigmoid"] = Field(
        "relu", description="Nonlinearity after each hidden layer."
    )
    dropout: FiniteFloat = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer.")


ModelSpec = Annotated[LinearModel | MLPModel, Field(discriminator="type")]


class SGDOptimizer(StrictModel):
    """Stochastic gradient descent (d2l's minibatch SGD with the defaults)."""

    type: Literal["sgd"] = "sgd"
    lr: FiniteFloat = Field(0.03, gt=0, description="Learning rate.")
    momentum: FiniteFloat = Field(0.0, ge=0, lt=1, description="Momentum factor.")
    weight_decay: FiniteFloat = Field(0.0, ge=0, description="L2 penalty.")
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0).")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> Self:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a momentum above 0")
        return self


class _AdamFamily(StrictModel):
    lr: FiniteFloat = Field(1e-3, gt=0, description="Learning rate.")
    betas: tuple[FiniteFloat, FiniteFloat] = Field(
        (0.9, 0.999), description="Decay rates of the first and second moment estimates."
    )
    eps: FiniteFloat = Field(1e-8, gt=0, description="Added to the denominator for stability.")


class AdamOptimizer(_AdamFamily):
    """Adam."""

    type: Literal["adam"] = "adam"
    weight_decay: FiniteFloat = Field(0.0, ge=0, description="L2 penalty (coupled, as in Adam).")


class AdamWOptimizer(_AdamFamily):
    """Adam with decoupled weight decay."""

    type: Literal["adamw"] = "adamw"
    weight_decay: FiniteFloat = Field(0.01, ge=0, description="Decoupled weight decay.")


class LBFGSOptimizer(StrictModel):
    """torch.optim.LBFGS on all training rows at once: one step of max_iter iterations an epoch."""

    type: Literal["lbfgs"] = "lbfgs"
    lr: FiniteFloat = Field(1.0, gt=0, description="Step length (scaled by the line search).")
    max_iter: int = Field(20, ge=1, le=10_000, description="Iterations per epoch.")
    history_size: int = Field(100, ge=1, le=1_000, description="Curvature pairs remembered.")
    line_search: Literal["strong_wolfe"] | None = Field(
        "strong_wolfe", description="strong_wolfe, or null for fixed steps of lr."
    )


class ClosedFormOptimizer(StrictModel):
    """Least squares (ridge when l2 > 0) solved directly: linear models with MSE only."""

    type: Literal["closed_form"] = "closed_form"
    l2: FiniteFloat = Field(
        0.0,
        ge=0,
        description="Ridge penalty on the weights, not the bias: minimises the sum of squared "
        "errors + l2 * |w|^2, w as the model holds it (on standardized features with "
        "standardize).",
    )


OptimizerSpec = Annotated[
    SGDOptimizer | AdamOptimizer | AdamWOptimizer | LBFGSOptimizer | ClosedFormOptimizer,
    Field(discriminator="type"),
]

MetricName = Annotated[
    str,
    Field(
        pattern=r"^(train|val)_(loss|rmse|r2|accuracy)$",
        description="train_ or val_ followed by loss, rmse, r2 (regression) or accuracy "
        "(classification).",
    ),
]
# Metrics where larger is better; every other one is minimised.
MAXIMISED_METRICS = ("r2", "accuracy")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("loss", "rmse", "r2"),
    "classification": ("loss", "accuracy"),
}


def metric_mode(metric: str, mode: Literal["min", "max"] | None = None) -> Literal["min", "max"]:
    """Whether a metric improves downwards or upwards: the explicit mode, else by its name."""
    if mode is not None:
        return mode
    return "max" if metric.split("_", 1)[1] in MAXIMISED_METRICS else "min"


class EarlyStopping(StrictModel):
    """Stop once a metric has not improved for `patience` epochs."""

    metric: MetricName = Field("val_loss", description="The metric watched.")
    mode: Literal["min", "max"] | None = Field(
        None, description="min or max; by default max for r2 and accuracy, min otherwise."
    )
    patience: int = Field(5, ge=1, description="Epochs without improvement before stopping.")
    min_delta: FiniteFloat = Field(
        0.0, ge=0, description="The least change that counts as an improvement."
    )
    restore_best: bool = Field(
        True, description="End with the weights of the best epoch rather than the last."
    )


class StepSchedule(StrictModel):
    """Multiply the learning rate by gamma every step_size epochs (StepLR)."""

    type: Literal["step"] = "step"
    step_size: int = Field(ge=1, description="Epochs between decays.")
    gamma: FiniteFloat = Field(0.1, gt=0, le=1, description="Decay factor.")


class CosineSchedule(StrictModel):
    """Cosine annealing from the optimizer's lr to eta_min over t_max epochs."""

    type: Literal["cosine"] = "cosine"
    t_max: int | None = Field(None, ge=1, description="Epochs of the half cycle (default: epochs).")
    eta_min: FiniteFloat = Field(0.0, ge=0, description="The lowest learning rate.")


class OneCycleSchedule(StrictModel):
    """The one-cycle policy, stepped every batch over all epochs (OneCycleLR).

    The lr starts at max_lr / 25, peaks at max_lr and ends at max_lr / 1e5 (torch's defaults);
    the optimizer's own lr and momentum are not used and not cycled.
    """

    type: Literal["onecycle"] = "onecycle"
    max_lr: FiniteFloat = Field(gt=0, description="The peak learning rate.")
    pct_start: FiniteFloat = Field(
        0.3, gt=0, lt=1, description="Fraction of the steps spent raising the lr."
    )


class PlateauSchedule(StrictModel):
    """Multiply the lr by factor once a metric has not improved for patience epochs."""

    type: Literal["plateau"] = "plateau"
    metric: MetricName = Field("val_loss", description="The metric watched.")
    mode: Literal["min", "max"] | None = Field(
        None, description="min or max; by default max for r2 and accuracy, min otherwise."
    )
    factor: FiniteFloat = Field(0.1, gt=0, lt=1, description="Decay factor.")
    patience: int = Field(10, ge=0, description="Epochs without improvement before a decay.")
    min_lr: FiniteFloat = Field(0.0, ge=0, description="The lr is never lowered below this.")


SchedulerSpec = Annotated[
    StepSchedule | CosineSchedule | OneCycleSchedule | PlateauSchedule,
    Field(discriminator="type"),
]


class Resources(StrictModel):
    """What one run trains with besides its device."""

    workers: int = Field(
        1,
        ge=1,
        le=16,
        description="processes training this run data-parallel (DistributedDataParallel)",
    )


Task = Literal["regression", "classification"]
Precision = Literal["fp32", "bf16"]
LossName = Literal["mse", "l1", "huber", "cross_entropy"]
REGRESSION_LOSSES = ("mse", "l1", "huber")
LOSS_TASKS: dict[str, Task] = {
    "mse": "regression",
    "l1": "regression",
    "huber": "regression",
    "cross_entropy": "classification",
}


MAX_TAGS = 20
Tag = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]*$",
        description="Letters, digits and _ . : / = -",
    ),
]


class RunRequest(StrictModel):
    """A run as a client asks for it; task and loss may be left for fitserve to fill in."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset": {
                        "type": "synthetic_linear",
                        "n_samples": 1000,
                        "true_w": [2, -3.4],
                        "true_b": 4.2,
                        "noise": 0.01,
                        "seed": 0,
                    },
                    "model": {"type": "linear"},
                    "loss": "mse",
                    "optimizer": {"type": "sgd", "lr": 0.03},
                    "epochs": 3,
                    "batch_size": 10,
                },
                {
                    "dataset": {
                        "type": "synthetic_classification",
                        "n_features": 4,
                        "n_classes": 3,
                    },
                    "model": {"type": "mlp", "hidden": [64, 64], "activation": "relu"},
                    "loss": "cross_entropy",
                    "optimizer": {"type": "adam", "lr": 0.01},
                    "epochs": 20,
                    "batch_size": 32,
                    "validation_split": 0.2,
                },
            ]
        },
    )

    name: str | None = Field(
        None, min_length=1, max_length=200, description="A label to find the run by."
    )
    tags: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description=f"Up to {MAX_TAGS} tags; `GET /runs?tag=` lists the runs carrying one.",
    )
    dataset: DatasetSpec = Field(description="Where the rows come from.")
    task: Task | None = Field(
        None, description="regression or classification; inferred from the loss when omitted."
    )
    model: ModelSpec = Field(default_factory=LinearModel, description="The network.")
    loss: LossName | None = Field(
        None, description="mse, l1, huber (regression) or cross_entropy (classification)."
    )
    optimizer: OptimizerSpec = Field(default_factory=SGDOptimizer, description="The optimizer.")
    epochs: int = Field(3, ge=1, description="Passes over the training rows.")
    batch_size: int = Field(10, ge=1, description="Rows per gradient step.")
    shuffle: bool = Field(True, description="Reshuffle the training rows every epoch.")
    seed: int = Field(0, description="Seeds initialisation, shuffling, dropout and the split.")
    validation_split: FiniteFloat = Field(
        0.0, ge=0, lt=1, description="Fraction of rows held out for validation (0: none)."
    )
    standardize: bool = Field(
        False,
        description="Scale features (and regression targets, see standardize_target) to zero "
        "mean and unit variance; the statistics are stored with the weights and applied at "
        "predict time.",
    )
    standardize_target: bool | None = Field(
        None,
        description="Train a regression on standardized targets, predictions in the original "
        "units (null: as standardize).",
    )
    scheduler: SchedulerSpec | None = Field(None, description="A learning-rate schedule.")
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop when a metric stops improving."
    )
    grad_clip_norm: FiniteFloat | None = Field(
        None, gt=0, description="Clip the gradients' total norm to this before each step."
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto (the worker's device), cpu, cuda or cuda:N.",
    )
    compile: bool = Field(
        False,
        description="Run the training steps' forward and backward through torch.compile "
        "(inductor; on CPU the worker needs a C++ compiler): slower to start, for networks "
        "large enough to gain from fused kernels. The weights are the same either way.",
    )
    precision: Precision = Field(
        "fp32",
        description="fp32, or bf16: the training steps' forward and loss under bfloat16 "
        "autocast (weights, optimizer and evaluation stay float32).",
    )
    resources: Resources = Field(
        default_factory=Resources, description="Processes the run trains on."
    )
    checkpoint_every: int = Field(1, ge=1, description="Checkpoint every N epochs.")
    max_seconds: FiniteFloat | None = Field(
        None, gt=0, description="Fail with `timeout` once training has taken this long."
    )
    max_attempts: int | None = Field(
        None,
        ge=1,
        le=20,
        description="Attempts that may be lost (a dead worker, an expired lease, no memory) "
        "before the run fails.",
    )

    @field_validator("tags")
    @classmethod
    def _tags_unique(cls, tags: list[str]) -> list[str]:
        repeated = sorted({tag for tag in tags if tags.count(tag) > 1})
        if repeated:
            raise ValueError(f"tags must be distinct; repeated: {', '.join(repeated)}")
        return tags


SYNTHETIC_TASKS: dict[str, Task] = {
    "synthetic_linear": "regression",
    "synthetic_classification": "classification",
}


class RunSpec(RunRequest):
    """Everything a worker needs to train one model: a request with task and loss resolved."""

    task: Task = Field(description="regression or classification.")
    loss: LossName = Field(description="mse, l1, huber (regression) or cross_entropy.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.task == "classification" and self.loss != "cross_entropy":
            raise ValueError(
                f"loss {self.loss!r} does not fit task 'classification'; use cross_entropy"
            )
        if self.task == "regression" and self.loss not in REGRESSION_LOSSES:
            raise ValueError(
                f"loss {self.loss!r} does not fit task 'regression'; use mse, l1 or huber"
            )
        dataset_task = SYNTHETIC_TASKS.get(self.dataset.type)
        if dataset_task is not None and dataset_task != self.task:
            raise ValueError(f"dataset {self.dataset.type} is for {dataset_task}, not {self.task}")
        if isinstance(self.dataset, InlineDataset) and self.task == "regression":
            for index, target in enumerate(self.dataset.targets):
                if isinstance(target, str):
                    raise ValueError(
                        f"targets[{index}] is {target!r}, not a number; regression needs numbers"
                    )
        self._check_training_options()
        return self

    @property
    def scales_target(self) -> bool:
        """Whether training fits standardized targets (regression only)."""
        # resolve_spec fills standardize_target in; it is null only in specs stored before it
        # existed, whose runs (and checkpoints) never scaled their targets.
        return self.task == "regression" and bool(self.standardize_target)

    def _check_training_options(self) -> None:
        if isinstance(self.optimizer, ClosedFormOptimizer):
            if self.task != "regression" or self.loss != "mse":
                raise FieldMisfit(
                    ("optimizer",), "closed_form solves least squares: it needs regression and mse"
                )
            if not isinstance(self.model, LinearModel):
                raise FieldMisfit(("optimizer",), "closed_form needs a linear model")
            if self.epochs != 1:
                raise FieldMisfit(("epochs",), "closed_form solves in one pass: epochs must be 1")
            for name in ("scheduler", "early_stopping", "grad_clip_norm"):
                if getattr(self, name) is not None:
                    raise FieldMisfit((name,), f"closed_form takes no {name}")
            if self.compile:
                raise FieldMisfit(("compile",), "closed_form takes no steps to compile")
            if self.precision != "fp32":
                raise FieldMisfit(("precision",), "closed_form solves in float64: use fp32")
        if self.resources.workers > 1 and isinstance(
            self.optimizer, LBFGSOptimizer | ClosedFormOptimizer
        ):
            raise FieldMisfit(
                ("resources", "workers"),
                f"{self.optimizer.type} takes the whole table at once: it trains in one process",
            )
        if isinstance(self.optimizer, LBFGSOptimizer) and self.grad_clip_norm is not None:
            raise FieldMisfit(
                ("grad_clip_norm",), "lbfgs needs the true gradient: grad_clip_norm cannot be used"
            )
        if self.task == "classification" and self.standardize_target:
            raise FieldMisfit(
                ("standardize_target",), "only regression targets can be standardized"
            )
        watched: list[tuple[str, EarlyStopping | PlateauSchedule | None]] = [
            ("early_stopping", self.early_stopping)
        ]
        if isinstance(self.scheduler, PlateauSchedule):
            watched.append(("scheduler", self.scheduler))
        for field, options in watched:
            if options is None:
                continue
            misfit = metric_misfit(
                options.metric, task=self.task, validation_split=self.validation_split
            )
            if misfit is not None:
                raise FieldMisfit((field, "metric"), misfit)


def metric_misfit(metric: str, *, task: str, validation_split: float) -> str | None:
    """Why a run of `task` would not report `metric` in its epochs, or None if it would."""
    part, kind = metric.split("_", 1)
    if kind not in TASK_METRICS[task]:
        return f"{task} has no metric {metric!r}; it reports " + ", ".join(
            f"{part}_{name}" for name in TASK_METRICS[task]
        )
    if part == "val" and validation_split == 0:
        return f"{metric} needs validation_split > 0 (or watch train_{kind})"
    return None


class FieldMisfit(ValueError):
    """A cross-field error that names the field at fault (pydantic gives model checks no loc)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class SpecConsistencyError(InvalidInputError):
    """Fields that are valid alone do not fit together (a loss for another task)."""

    # The type pydantic gives a model validator's error, as these were before resolution
    # moved out of request validation.
    type = "value_error"


def resolve_spec(request: RunRequest, *, dataset_task: Task | None = None) -> RunSpec:
    """The spec to train: the task named, else implied by the loss, else the dataset's.

    `dataset_task` is a stored dataset's task; synthetic datasets carry their own. The
    result is validated as a whole, so a loss that does not fit the task is refused here.
    """
    implied = None if request.loss is None else LOSS_TASKS[request.loss]
    task = (
        request.task
        or implied
        or dataset_task
        or SYNTHETIC_TASKS.get(request.dataset.type)
        or "regression"
    )
    loss = request.loss or ("cross_entropy" if task == "classification" else "mse")
    fields = {**dict(request), "task": task, "loss": loss}
    if request.standardize_target is None:
        fields["standardize_target"] = task == "regression" and request.standardize
    if (
        isinstance(request.optimizer, ClosedFormOptimizer)
        and "epochs" not in request.model_fields_set
    ):
        # A direct solve is one pass; the default of 3 epochs is for iterative optimizers.
        fields["epochs"] = 1
    try:
        # Fields pass through as validated instances: an inline dataset is not checked twice.
        return RunSpec(**fields)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        cause = first.get("ctx", {}).get("error")
        loc = cause.loc if isinstance(cause, FieldMisfit) else first["loc"]
        raise SpecConsistencyError(first["msg"], loc=("body", *loc)) from None
