"""Networks, losses and optimizers built from the spec."""

from collections.abc import Iterable
from itertools import pairwise

import torch
from torch import nn

from app.training.spec import (
    AdamOptimizer,
    AdamWOptimizer,
    ClosedFormOptimizer,
    CosineSchedule,
    LBFGSOptimizer,
    LinearModel,
    LossName,
    MLPModel,
    ModelSpec,
    OneCycleSchedule,
    OptimizerSpec,
    PlateauSchedule,
    SchedulerSpec,
    SGDOptimizer,
    StepSchedule,
    Task,
    metric_mode,
)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


class TabularNet(nn.Module):
    """`net` is the d2l-style Sequential; optional buffers standardise inputs inside the module.

    With `standardize_target` the network fits standardized targets and `forward` maps its
    output back to the original units, so a weights file predicts in the units it was given.
    """

    # Registered as buffers when standardizing: saved with the weights, moved with the module.
    input_mean: torch.Tensor
    input_std: torch.Tensor
    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(
        self,
        *,
        n_features: int,
        n_outputs: int,
        model: ModelSpec,
        task: Task,
        standardize: bool,
        standardize_target: bool = False,
    ) -> None:
        super().__init__()
        self.squeeze_output = task == "regression"
        self.standardize = standardize
        self.standardize_target = standardize_target
        if standardize:
            self.register_buffer("input_mean", torch.zeros(n_features))
            self.register_buffer("input_std", torch.ones(n_features))
        if standardize_target:
            self.register_buffer("target_mean", torch.zeros(1))
            self.register_buffer("target_std", torch.ones(1))
        self.net = nn.Sequential(*_layers(n_features, n_outputs, model))

    def scaled_forward(self, features: torch.Tensor) -> torch.Tensor:
        """The network's output in the units it is trained in (standardized targets, if so)."""
        if self.standardize:
            features = (features - self.input_mean) / self.input_std
        output = self.net(features)
        return output.squeeze(-1) if self.squeeze_output else output

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Predictions: values in the target's units for regression, logits for classification."""
        output = self.scaled_forward(features)
        if self.standardize_target:
            output = output * self.target_std + self.target_mean
        return output


def _layers(n_features: int, n_outputs: int, model: ModelSpec) -> Iterable[nn.Module]:
    if isinstance(model, LinearModel):
        yield nn.Linear(n_features, n_outputs)
        return
    width = n_features
    for hidden in model.hidden:
        yield nn.Linear(width, hidden)
        yield ACTIVATIONS[model.activation]()
        if model.dropout > 0:
            yield nn.Dropout(model.dropout)
        width = hidden
    yield nn.Linear(width, n_outputs)


def count_parameters(*, n_features: int, n_outputs: int, model: ModelSpec) -> int:
    """Trainable parameters of the network the spec describes, without building it."""
    widths = [n_features, *(model.hidden if isinstance(model, MLPModel) else []), n_outputs]
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in pairwise(widths))


def make_loss(name: LossName) -> nn.Module:
    """The loss module for a loss name."""
    return {
        "mse": nn.MSELoss,
        "l1": nn.L1Loss,
        "huber": nn.HuberLoss,
        "cross_entropy": nn.CrossEntropyLoss,
    }[name]()


def make_optimizer(
    spec: OptimizerSpec, parameters: Iterable[nn.Parameter]
) -> torch.optim.Optimizer | None:
    """The optimizer the spec names, over the given parameters; None for a direct solve."""
    match spec:
        case ClosedFormOptimizer():
            return None
        case LBFGSOptimizer():
            return torch.optim.LBFGS(
                parameters,
                lr=spec.lr,
                max_iter=spec.max_iter,
                history_size=spec.history_size,
                line_search_fn=spec.line_search,
            )
        case SGDOptimizer():
            return torch.optim.SGD(
                parameters,
                lr=spec.lr,
                momentum=spec.momentum,
                weight_decay=spec.weight_decay,
                nesterov=spec.nesterov,
            )
        case AdamOptimizer() | AdamWOptimizer():
            adam = torch.optim.Adam if isinstance(spec, AdamOptimizer) else torch.optim.AdamW
            # One kernel per parameter instead of a dozen: a fifth off a small network's step
            # on the CPU. It rounds differently from the default loop, in the last bits.
            return adam(
                parameters,
                lr=spec.lr,
                betas=spec.betas,
                eps=spec.eps,
                weight_decay=spec.weight_decay,
                fused=True,
            )
    raise ValueError(f"unknown optimizer {spec.type}")


def make_scheduler(
    spec: SchedulerSpec, optimizer: torch.optim.Optimizer, *, epochs: int, batches_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate scheduler the spec names, for a run of `epochs` epochs."""
    lr_scheduler = torch.optim.lr_scheduler
    match spec:
        case StepSchedule():
            return lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
        case CosineSchedule():
            return lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=spec.t_max or epochs, eta_min=spec.eta_min
            )
        case OneCycleSchedule():
            return lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=spec.max_lr,
                total_steps=epochs * batches_per_epoch,
                pct_start=spec.pct_start,
                # Cycling would switch on momentum an SGD spec left at 0, and LBFGS has none.
                cycle_momentum=False,
            )
        case PlateauSchedule():
            return lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode=metric_mode(spec.metric, spec.mode),
                factor=spec.factor,
                patience=spec.patience,
                min_lr=spec.min_lr,
            )
    raise ValueError(f"unknown scheduler {spec.type}")
