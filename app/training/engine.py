"""The training loop: data on the device once, batches by slicing a shuffled index, resumable."""

import math
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from app.errors import InvalidInputError
from app.training.artifacts import Architecture, CheckpointBlob, pack_checkpoint, unpack_checkpoint
from app.training.data import Table, feature_statistics, materialize, split_rows
from app.training.modules import make_loss, make_optimizer
from app.training.spec import RunRequest, RunSpec, resolve_spec

EVAL_CHUNK_ROWS = 65_536


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


@dataclass(frozen=True)
class Outcome:
    """How training ended: all epochs done, stopped from outside, or a failure."""

    status: Literal["completed", "interrupted", "diverged", "timeout"]
    epoch: int
    message: str | None = None
    last_report: EpochReport | None = None


class TrainingHooks(Protocol):
    """What the loop asks of its caller; every call happens at a batch or epoch boundary."""

    def interrupted(self) -> bool:
        """Whether to stop before the next batch."""
        ...

    def before_batch(self, epoch: int, batch: int, n_batches: int) -> None:
        """Called before each gradient step (epoch counts from 1)."""
        ...

    def epoch_finished(self, report: EpochReport, trainer: "Trainer") -> None:
        """Called once per epoch, after its report is computed."""
        ...


@dataclass
class _Progress:
    epoch: int = 0
    batch: int = 0
    elapsed: float = 0.0
    epoch_seconds: float = 0.0


def _seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Trainer:
    """Trains one spec on one table and device; can checkpoint and resume mid-epoch."""

    def __init__(self, *, spec: RunSpec, table: Table, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self.table = table
        split = split_rows(table, fraction=spec.validation_split, seed=spec.seed)
        if len(split.train) == 0:
            raise InvalidInputError(
                "validation_split leaves no training rows", loc=("body", "validation_split")
            )
        self.architecture = Architecture(
            task=spec.task,
            n_features=table.n_features,
            n_outputs=table.n_outputs,
            model=spec.model.model_dump(),
            standardize=spec.standardize,
            classes=table.classes,
            feature_names=table.feature_names,
        )
        torch.manual_seed(spec.seed)
        self.module = self.architecture.build()
        if spec.standardize:
            mean, std = feature_statistics(table.features[split.train])
            self.module.input_mean.copy_(mean)
            self.module.input_std.copy_(std)
        self.module.to(device)
        self.train_x = table.features[split.train].to(device)
        self.train_y = table.targets[split.train].to(device)
        self.val_x = table.features[split.validation].to(device)
        self.val_y = table.targets[split.validation].to(device)
        self.loss_fn = make_loss(spec.loss)
        self.optimizer = make_optimizer(spec.optimizer, self.module.parameters())
        self.shuffle_generator = _seeded_generator(spec.seed)
        self._epoch_shuffle_state = self.shuffle_generator.get_state()
        self._progress = _Progress()

    @property
    def epochs_done(self) -> int:
        """Epochs fully finished so far."""
        return self._progress.epoch

    def checkpoint(self) -> CheckpointBlob:
        """A snapshot from which `restore` continues exactly where this trainer is now."""
        rng = {"cpu": torch.get_rng_state(), "shuffle": self._epoch_shuffle_state}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        progress = self._progress
        return pack_checkpoint(
            module=self.module,
            optimizer=self.optimizer,
            rng=rng,
            progress={
                "epoch": progress.epoch,
                "batch": progress.batch,
                "elapsed": progress.elapsed,
                "epoch_seconds": progress.epoch_seconds,
            },
        )

    def restore(self, blob: CheckpointBlob) -> None:
        """Continue from a checkpoint taken by a trainer of the same spec."""
        rng, progress = unpack_checkpoint(blob, module=self.module, optimizer=self.optimizer)
        torch.set_rng_state(rng["cpu"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self._epoch_shuffle_state = rng["shuffle"]
        self._progress = _Progress(
            epoch=progress["epoch"],
            batch=progress["batch"],
            elapsed=progress["elapsed"],
            epoch_seconds=progress["epoch_seconds"],
        )

    def run(self, hooks: TrainingHooks) -> Outcome:
        """Train until all epochs are done, the hooks interrupt, or training fails."""
        spec, progress = self.spec, self._progress
        n_rows = self.train_x.shape[0]
        n_batches = math.ceil(n_rows / spec.batch_size)
        attempt_start = time.perf_counter()
        elapsed_before = progress.elapsed
        report: EpochReport | None = None
        while progress.epoch < spec.epochs:
            epoch = progress.epoch + 1
            epoch_start = time.perf_counter() - progress.epoch_seconds
            self.shuffle_generator.set_state(self._epoch_shuffle_state)
            order = (
                torch.randperm(n_rows, generator=self.shuffle_generator).to(self.device)
                if spec.shuffle
                else torch.arange(n_rows, device=self.device)
            )
            self.module.train()
            for batch in range(progress.batch, n_batches):
                now = time.perf_counter()
                progress.elapsed = elapsed_before + (now - attempt_start)
                progress.epoch_seconds = now - epoch_start
                progress.batch = batch
                if hooks.interrupted():
                    return Outcome("interrupted", epoch=progress.epoch, last_report=report)
                if spec.max_seconds is not None and progress.elapsed > spec.max_seconds:
                    return Outcome(
                        "timeout",
                        epoch=progress.epoch,
                        message=f"training took longer than max_seconds={spec.max_seconds:g} "
                        f"during epoch {epoch}",
                        last_report=report,
                    )
                hooks.before_batch(epoch, batch, n_batches)
                index = order[batch * spec.batch_size : (batch + 1) * spec.batch_size]
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.module(self.train_x[index]), self.train_y[index])
                loss.backward()
                self.optimizer.step()
            report = self._evaluate(epoch, seconds=time.perf_counter() - epoch_start)
            progress.epoch, progress.batch, progress.epoch_seconds = epoch, 0, 0.0
            progress.elapsed = elapsed_before + (time.perf_counter() - attempt_start)
            self._epoch_shuffle_state = self.shuffle_generator.get_state()
            non_finite = report.non_finite()
            if non_finite:
                return Outcome(
                    "diverged",
                    epoch=epoch,
                    message=f"{non_finite} became {report.value(non_finite)} at epoch {epoch}",
                    last_report=report,
                )
            hooks.epoch_finished(report, self)
        return Outcome("completed", epoch=progress.epoch, last_report=report)

    @torch.no_grad()
    def _evaluate(self, epoch: int, *, seconds: float) -> EpochReport:
        self.module.eval()
        train_loss, train_metrics = self._score(self.train_x, self.train_y)
        metrics = {f"train_{name}": value for name, value in train_metrics.items()}
        val_loss = None
        if len(self.val_x):
            val_loss, val_metrics = self._score(self.val_x, self.val_y)
            metrics.update({f"val_{name}": value for name, value in val_metrics.items()})
        return EpochReport(epoch, train_loss, val_loss, metrics, seconds)

    def _score(
        self, features: torch.Tensor, targets: torch.Tensor
    ) -> tuple[float, dict[str, float]]:
        outputs = torch.cat(
            [self.module(chunk) for chunk in torch.split(features, EVAL_CHUNK_ROWS)]
        )
        loss = self.loss_fn(outputs, targets)
        if self.architecture.task == "classification":
            accuracy = (outputs.argmax(dim=1) == targets).float().mean()
            values = torch.stack([loss, accuracy]).tolist()
            return values[0], {"accuracy": values[1]}
        residual = outputs - targets
        total = ((targets - targets.mean()) ** 2).sum()
        r2 = 1 - (residual**2).sum() / total if total > 0 else torch.tensor(0.0, device=self.device)
        values = torch.stack([loss, (residual**2).mean().sqrt(), r2.to(loss.dtype)]).tolist()
        return values[0], {"rmse": values[1], "r2": values[2]}


def estimation_error(trainer: Trainer) -> dict[str, list[float] | float] | None:
    """d2l's "error in estimating w and b": truth minus learned, in the original feature scale."""
    truth = trainer.table.truth
    if truth is None or trainer.spec.model.type != "linear":
        return None
    layer = trainer.module.net[0]
    w = layer.weight.detach().to("cpu", torch.float64).reshape(-1)
    b = float(layer.bias.detach().to("cpu", torch.float64).item())
    if trainer.spec.standardize:
        mean = trainer.module.input_mean.to("cpu", torch.float64)
        std = trainer.module.input_std.to("cpu", torch.float64)
        w = w / std
        b = b - float((w * mean).sum())
    return {
        "w": [t - learned for t, learned in zip(truth.w, w.tolist(), strict=True)],
        "b": truth.b - b,
        "learned_w": w.tolist(),
        "learned_b": b,
    }


class Uninterrupted:
    """Hooks that never stop training and record nothing: warm-up and training outside a worker."""

    def interrupted(self) -> bool:
        """Never stop."""
        return False

    def before_batch(self, epoch: int, batch: int, n_batches: int) -> None:
        """Nothing to do before a batch."""

    def epoch_finished(self, report: EpochReport, trainer: Trainer) -> None:
        """Nothing to record."""


def warm_up(device: torch.device) -> None:
    """Train a tiny model once, so torch's lazy start-up (about a second) is not paid by a user."""
    spec = resolve_spec(
        RunRequest.model_validate(
            {"dataset": {"type": "synthetic_linear", "n_samples": 8}, "epochs": 1, "batch_size": 4}
        )
    )
    trainer = Trainer(spec=spec, table=materialize(spec.dataset, "regression"), device=device)
    trainer.run(Uninterrupted())
    trainer.checkpoint()
