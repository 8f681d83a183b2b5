"""Networks, losses and optimizers built from the spec."""

from collections.abc import Iterable
from itertools import pairwise

import torch
from torch import nn

from app.training.spec import (
    AdamOptimizer,
    AdamWOptimizer,
    LinearModel,
    LossName,
    MLPModel,
    ModelSpec,
    OptimizerSpec,
    SGDOptimizer,
    Task,
)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


class TabularNet(nn.Module):
    """`net` is the d2l-style Sequential; optional buffers standardise inputs inside the module."""

    def __init__(
        self, *, n_features: int, n_outputs: int, model: ModelSpec, task: Task, standardize: bool
    ) -> None:
        super().__init__()
        self.squeeze_output = task == "regression"
        self.standardize = standardize
        if standardize:
            self.register_buffer("input_mean", torch.zeros(n_features))
            self.register_buffer("input_std", torch.ones(n_features))
        self.net = nn.Sequential(*_layers(n_features, n_outputs, model))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Predictions: values for regression, logits for classification."""
        if self.standardize:
            features = (features - self.input_mean) / self.input_std
        output = self.net(features)
        return output.squeeze(-1) if self.squeeze_output else output


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
) -> torch.optim.Optimizer:
    """The optimizer the spec names, over the given parameters."""
    match spec:
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
            return adam(
                parameters,
                lr=spec.lr,
                betas=spec.betas,
                eps=spec.eps,
                weight_decay=spec.weight_decay,
            )
    raise ValueError(f"unknown optimizer {spec.type}")
