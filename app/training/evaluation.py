"""What an epoch reports and how it is measured: the loss and metrics of a module on rows,
scored in cache-sized chunks without autograd, and early stopping, an observer of each
epoch's report."""

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from app.training.data import RowSubset
from app.training.spec import EarlyStopping as EarlyStoppingOptions
from app.training.spec import Task, metric_mode

# Rows a pass over the table (scoring, the full-batch loss, the direct solve) takes at most.
EVAL_CHUNK_ROWS = 65_536
# Rows scored at a time are chosen so that a chunk's widest activation holds about this many
# values (2 MiB of float32): it stays in cache, which makes scoring a small network several
# times faster than with 65,536-row chunks.
SCORE_CHUNK_VALUES = 1 << 19
MIN_SCORE_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class EpochReport:
    """What one finished epoch measured."""

    epoch: int
    train_loss: float
    val_loss: float | None
    metrics: dict[str, float]
    seconds: float

    def value(self, name: str) -> float | None:
        """A loss or metric by name."""
        return {"train_loss": self.train_loss, "val_loss": self.val_loss, **self.metrics}[name]

    def non_finite(self) -> str | None:
        """The first loss or metric that is NaN or infinite, if any."""
        for name in ("train_loss", "val_loss", *self.metrics):
            value = self.value(name)
            if value is not None and not math.isfinite(value):
                return name
        return None


class Scorer:
    """Scores a module on rows: its loss and metrics, in chunks sized to stay in cache."""

    def __init__(self, *, module: nn.Module, loss_fn: nn.Module, task: Task, widest: int) -> None:
        self.module = module
        self.loss_fn = loss_fn
        self.task = task
        self.chunk_rows = min(
            EVAL_CHUNK_ROWS, max(MIN_SCORE_CHUNK_ROWS, SCORE_CHUNK_VALUES // widest)
        )

    @torch.no_grad()
    def __call__(
        self, features: RowSubset, targets: torch.Tensor
    ) -> tuple[float, dict[str, float]]:
        """The loss and metrics of the module on these rows."""
        # The outputs are kept whole, so that the loss and metrics reduce as one tensor. They
        # go into one tensor made at the first chunk: a list of small chunk outputs, each
        # allocated among the chunk's larger temporaries, fragments the heap until it holds
        # as much as the features themselves.
        outputs: torch.Tensor | None = None
        size = self.chunk_rows
        for start, chunk in zip(range(0, len(features), size), features.chunks(size), strict=True):
            output = self.module(chunk)
            if outputs is None:
                outputs = output.new_empty((len(features), *output.shape[1:]))
            outputs[start : start + chunk.shape[0]] = output
        assert outputs is not None  # only parts with rows are scored
        loss = self.loss_fn(outputs, targets)
        if self.task == "classification":
            accuracy = (outputs.argmax(dim=1) == targets).float().mean()
            values = torch.stack([loss, accuracy]).tolist()
            return values[0], {"accuracy": values[1]}
        residual = outputs - targets
        total = ((targets - targets.mean()) ** 2).sum()
        r2 = (
            1 - (residual**2).sum() / total
            if total > 0
            else torch.tensor(0.0, device=targets.device)
        )
        values = torch.stack([loss, (residual**2).mean().sqrt(), r2.to(loss.dtype)]).tolist()
        return values[0], {"rmse": values[1], "r2": values[2]}


@dataclass
class EarlyStoppingState:
    """Where early stopping stands; JSON-ready, so it travels in checkpoints."""

    best: float | None = None
    best_epoch: int | None = None
    best_report: dict[str, Any] | None = None
    bad_epochs: int = 0
    stopped: bool = False


class EarlyStopping:
    """Early stopping as an observer of each epoch's report.

    Its state is JSON-ready and travels in checkpoints, with the best epoch's weights beside
    it when `restore_best` keeps them.
    """

    def __init__(self, options: EarlyStoppingOptions | None) -> None:
        self.options = options
        self.state = EarlyStoppingState()
        self.best_weights: dict[str, torch.Tensor] | None = None

    @property
    def stopped(self) -> bool:
        """Whether patience ran out."""
        return self.state.stopped

    def checkpoint_state(self) -> dict[str, Any] | None:
        """The state a checkpoint keeps (None without early stopping)."""
        return None if self.options is None else asdict(self.state)

    def restore(
        self,
        state: dict[str, Any] | None,
        best: dict[str, torch.Tensor] | None,
        device: torch.device,
    ) -> None:
        """Continue from a checkpoint's state and best weights."""
        if state is not None:
            self.state = EarlyStoppingState(**state)
        if best is not None:
            self.best_weights = {name: tensor.to(device) for name, tensor in best.items()}

    def restore_best(self, module: nn.Module) -> bool:
        """With `restore_best`, load the best epoch's weights into `module`; whether it did."""
        if self.options is None or not self.options.restore_best or self.best_weights is None:
            return False
        module.load_state_dict(self.best_weights)
        return True

    def observe(self, report: EpochReport, module: nn.Module) -> None:
        """Take an epoch's report: remember the best (and its weights); stop when patience ends."""
        options = self.options
        if options is None:
            return
        value = report.value(options.metric)
        assert value is not None  # the spec asks for validation rows to watch val_ metrics
        state = self.state
        if metric_mode(options.metric, options.mode) == "min":
            improved = state.best is None or value < state.best - options.min_delta
        else:
            improved = state.best is None or value > state.best + options.min_delta
        if improved:
            state.best, state.best_epoch, state.bad_epochs = value, report.epoch, 0
            state.best_report = asdict(report)
            if options.restore_best:
                self.best_weights = {
                    name: tensor.detach().clone() for name, tensor in module.state_dict().items()
                }
        else:
            state.bad_epochs += 1
            state.stopped = state.bad_epochs >= options.patience
