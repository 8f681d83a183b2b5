"""The training loop: batches gathered by a shuffled index into the table's rows, resumable."""

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import torch
from torch import distributed, nn
from torch.nn.parallel import DistributedDataParallel

from app.errors import InvalidInputError
from app.training.data import (
    RowSubset,
    Table,
    feature_statistics,
    materialize,
    split_rows,
    target_statistics,
)
from app.training.evaluation import EVAL_CHUNK_ROWS, EarlyStopping, EpochReport, Scorer
from app.training.modules import TabularNet, make_loss, make_optimizer, make_scheduler
from app.training.serialization import (
    Architecture,
    CheckpointBlob,
    TrainingState,
    pack_checkpoint,
    unpack_checkpoint,
)
from app.training.solvers import linear_coefficients, solve_least_squares
from app.training.spec import (
    ClosedFormOptimizer,
    LBFGSOptimizer,
    MLPModel,
    OneCycleSchedule,
    PlateauSchedule,
    RunRequest,
    RunSpec,
    resolve_spec,
)

# Training rows are gathered a block of batches at a time, about this many values (4 MiB of
# float32) into one reused buffer: one large gather of rows scattered over the table is much
# faster than a small one per batch, and the block stays small beside the table.
GATHER_BLOCK_VALUES = 1 << 20
# What the replicas of a data-parallel run agree on before each batch (the largest wins).
GO, INTERRUPTED, TIMED_OUT = 0, 1, 2


@dataclass(frozen=True)
class Replica:
    """This process's place among the processes training one run data-parallel."""

    rank: int
    world_size: int


@dataclass(frozen=True)
class Outcome:
    """How training ended: all epochs done (or stopped early), stopped from outside, a failure.

    `last_report` describes the weights the trainer ends with: the best epoch's when early
    stopping restored them. `best_epoch` is set with early stopping, `stopped_early_at` when
    it ended the run before its last epoch.
    """

    status: Literal["completed", "interrupted", "diverged", "timeout"]
    epoch: int
    message: str | None = None
    last_report: EpochReport | None = None
    stopped_early_at: int | None = None
    best_epoch: int | None = None


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
    # The learning rate at the current (or last) epoch's first step, reported as `lr`.
    lr: float | None = None


def _seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _ScaledForward(nn.Module):
    """A module whose forward is `scaled_forward`: what DDP and torch.compile wrap to train.

    DDP synchronises gradients only through its wrapper's forward, and the training loss is
    taken on `scaled_forward`, not on the module's own forward.
    """

    def __init__(self, module: TabularNet) -> None:
        super().__init__()
        self.module = module

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The network's output in the units it is trained in."""
        return self.module.scaled_forward(features)


def _compiler_failed(error: BaseException) -> bool:
    """Whether torch.compile's backend (inductor: a C++ compiler on CPU) failed."""
    # Imported here: dynamo is loaded once a run compiles, and costs a worker nothing before.
    from torch._dynamo.exc import BackendCompilerFailed

    return isinstance(error, BackendCompilerFailed)


def _watches_validation(spec: RunSpec) -> bool:
    """Whether early stopping or a plateau schedule watches a validation metric."""
    watched = [
        spec.early_stopping,
        spec.scheduler if isinstance(spec.scheduler, PlateauSchedule) else None,
    ]
    return any(options.metric.startswith("val_") for options in watched if options is not None)


class Trainer:
    """Trains one spec on one table and device; can checkpoint and resume mid-epoch.

    With a `replica`, this process is one of `replica.world_size` training the run
    data-parallel: the caller has initialised torch.distributed's default process group (gloo
    on CPU, nccl on CUDA) with that world size and gives every rank the same spec, table and
    checkpoint. Each rank trains on its share of every batch through DistributedDataParallel
    and evaluates all rows; the ranks stop at the same batch, and rank 0's `checkpoint` is one
    a trainer of any world size (or none) resumes from.
    """

    def __init__(
        self,
        *,
        spec: RunSpec,
        table: Table,
        device: torch.device,
        replica: Replica | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.table = table
        self.replica = replica
        split = split_rows(table, fraction=spec.validation_split, seed=spec.seed)
        if len(split.train) == 0:
            raise InvalidInputError(
                "validation_split leaves no training rows", loc=("body", "validation_split")
            )
        if len(split.validation) == 0 and _watches_validation(spec):
            raise InvalidInputError(
                "validation_split leaves no validation rows to watch",
                loc=("body", "validation_split"),
            )
        self.architecture = Architecture(
            task=spec.task,
            n_features=table.n_features,
            n_outputs=table.n_outputs,
            model=spec.model.model_dump(),
            standardize=spec.standardize,
            classes=table.classes,
            feature_names=table.feature_names,
            standardize_target=spec.scales_target,
        )
        torch.manual_seed(spec.seed)
        self.module = self.architecture.build()
        # The feature matrix is never copied in part: training and validation rows are
        # gathered from it by index, a batch or a chunk at a time. When every row trains
        # there is no index at all. Targets, one column, are gathered once.
        train_rows = split.train if len(split.validation) else None
        train_y = table.targets if train_rows is None else table.targets[train_rows]
        if spec.standardize:
            mean, std = feature_statistics(table.features, train_rows)
            self.module.input_mean.copy_(mean)
            self.module.input_std.copy_(std)
        if spec.scales_target:
            mean, std = target_statistics(train_y)
            self.module.target_mean.copy_(mean)
            self.module.target_std.copy_(std)
        self.module.to(device)
        # On the CPU this is the table's own tensor; on an accelerator the whole table is
        # copied there once, which costs no more than its two parts did.
        features = table.features.to(device)
        self.train_x = RowSubset(features, None if train_rows is None else train_rows.to(device))
        self.train_y = train_y.to(device)
        self.val_x = RowSubset(features, split.validation.to(device))
        self.val_y = table.targets[split.validation].to(device)
        # What the network is fitted to: targets in the units `scaled_forward` answers in.
        self.fit_y = (
            (self.train_y - self.module.target_mean) / self.module.target_std
            if spec.scales_target
            else self.train_y
        )
        self.loss_fn = make_loss(spec.loss)
        hidden = spec.model.hidden if isinstance(spec.model, MLPModel) else []
        self.scorer = Scorer(
            module=self.module,
            loss_fn=self.loss_fn,
            task=spec.task,
            widest=max(table.n_features, table.n_outputs, *hidden),
        )
        self.optimizer = make_optimizer(spec.optimizer, self.module.parameters())
        self.full_batch = isinstance(spec.optimizer, LBFGSOptimizer | ClosedFormOptimizer)
        if replica is not None and self.full_batch and replica.world_size > 1:
            raise InvalidInputError(
                f"{spec.optimizer.type} trains in one process", loc=("body", "resources", "workers")
            )
        self._closed_form = isinstance(spec.optimizer, ClosedFormOptimizer)
        self._steps_schedule = isinstance(spec.scheduler, OneCycleSchedule)
        self._precision = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if spec.precision == "bf16"
            else contextlib.nullcontext()
        )
        # What the steps call for the network's output: set up by `run`, after any `restore`.
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._agreement: torch.Tensor | None = None
        self._block_batches = max(1, GATHER_BLOCK_VALUES // (spec.batch_size * table.n_features))
        self._block_buffer: torch.Tensor | None = None
        # The epoch's order and block number the gathered rows are of, and those rows.
        self._block: tuple[torch.Tensor, int, torch.Tensor, torch.Tensor] | None = None
        n_rows = len(self.train_x)
        self.batches_per_epoch = 1 if self.full_batch else math.ceil(n_rows / spec.batch_size)
        self.scheduler = (
            make_scheduler(
                spec.scheduler,
                self.optimizer,
                epochs=spec.epochs,
                batches_per_epoch=self.batches_per_epoch,
            )
            if spec.scheduler is not None and self.optimizer is not None
            else None
        )
        self.shuffle_generator = _seeded_generator(spec.seed)
        self._epoch_shuffle_state = self.shuffle_generator.get_state()
        self._progress = _Progress()
        self.early_stopping = EarlyStopping(spec.early_stopping)

    @property
    def epochs_done(self) -> int:
        """Epochs fully finished so far."""
        return self._progress.epoch

    def checkpoint(self) -> CheckpointBlob:
        """A snapshot from which `restore` continues exactly where this trainer is now."""
        rng = {"cpu": torch.get_rng_state(), "shuffle": self._epoch_shuffle_state}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return pack_checkpoint(
            module=self.module,
            optimizer=self.optimizer,
            training=TrainingState(
                rng=rng,
                progress=asdict(self._progress),
                scheduler=None if self.scheduler is None else self.scheduler.state_dict(),
                early_stopping=self.early_stopping.checkpoint_state(),
                best=self.early_stopping.best_weights,
            ),
        )

    def restore(self, blob: CheckpointBlob) -> None:
        """Continue from a checkpoint taken by a trainer of the same spec."""
        state = unpack_checkpoint(blob, module=self.module, optimizer=self.optimizer)
        torch.set_rng_state(state.rng["cpu"])
        if self.device.type == "cuda" and "cuda" in state.rng:
            torch.cuda.set_rng_state(state.rng["cuda"], self.device)
        self._epoch_shuffle_state = state.rng["shuffle"]
        self._progress = _Progress(**state.progress)
        if self.scheduler is not None and state.scheduler is not None:
            self.scheduler.load_state_dict(state.scheduler)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
                steps = self.spec.epochs * self.batches_per_epoch
                if self.scheduler.total_steps != steps:
                    # Its phases were laid out over the run's first length; past their end
                    # torch's cosine would climb again.
                    raise InvalidInputError(
                        "a onecycle schedule cannot change length: resume with the run's epochs",
                        loc=("body", "epochs"),
                    )
        self.early_stopping.restore(state.early_stopping, state.best, self.device)

    def run(self, hooks: TrainingHooks) -> Outcome:
        """Train until the epochs are done, early stopping ends them, or hooks or failure stop."""
        self._prepare_steps()
        try:
            return self._train(hooks)
        except Exception as error:
            if self.spec.compile and _compiler_failed(error):
                raise InvalidInputError(
                    f"torch.compile cannot compile on this worker ({type(error).__name__}: "
                    f"{str(error).splitlines()[0]}); train without compile",
                    loc=("body", "compile"),
                ) from error
            raise

    def _prepare_steps(self) -> None:
        """What the training steps call: the module, or its DDP wrapper, compiled if asked."""
        if self._forward is not None:
            return
        replica = self.replica
        forward: Callable[[torch.Tensor], torch.Tensor] = self.module.scaled_forward
        if replica is not None:
            on_cuda = self.device.type == "cuda"
            device_ids = None
            if on_cuda:
                device_ids = [self.device.index if self.device.index is not None else 0]
            # Buffers (the standardisation statistics) never change while training: broadcasting
            # them before every step would only cost time.
            forward = DistributedDataParallel(
                _ScaledForward(self.module), device_ids=device_ids, forward_sync_buffers=False
            )
            nccl = distributed.get_backend() == distributed.Backend.NCCL
            self._agreement = torch.zeros(
                1, dtype=torch.int32, device=self.device if nccl else "cpu"
            )
        elif self.spec.compile:
            forward = _ScaledForward(self.module)
        if self.spec.compile:
            # Dynamo keeps every graph of a function, up to a limit past which it quietly runs
            # eager: a worker compiling run after run would leak graphs, then stop compiling.
            # Each run starts afresh; inductor's on-disk cache still spares repeated codegen.
            torch._dynamo.reset()
            forward = torch.compile(forward)
        self._forward = forward

    def _train(self, hooks: TrainingHooks) -> Outcome:
        spec, progress, replica = self.spec, self._progress, self.replica
        n_rows = len(self.train_x)
        n_batches = self.batches_per_epoch
        attempt_start = time.perf_counter()
        elapsed_before = progress.elapsed
        # Only rank 0's clock decides a timeout, so that every rank stops at the same batch.
        deadline = (
            None
            if spec.max_seconds is None or (replica is not None and replica.rank != 0)
            else attempt_start + (spec.max_seconds - elapsed_before)
        )
        report: EpochReport | None = None
        while progress.epoch < spec.epochs and not self.early_stopping.stopped:
            epoch = progress.epoch + 1
            epoch_start = time.perf_counter() - progress.epoch_seconds
            order = None
            if not self.full_batch:
                self.shuffle_generator.set_state(self._epoch_shuffle_state)
                order = (
                    torch.randperm(n_rows, generator=self.shuffle_generator).to(self.device)
                    if spec.shuffle
                    else torch.arange(n_rows, device=self.device)
                )
            self.module.train()
            for batch in range(progress.batch, n_batches):
                progress.batch = batch
                stop = INTERRUPTED if hooks.interrupted() else GO
                if deadline is not None and stop == GO and time.perf_counter() > deadline:
                    stop = TIMED_OUT
                if replica is not None:
                    stop = self._agree(stop)
                if stop != GO:
                    now = time.perf_counter()
                    progress.elapsed = elapsed_before + (now - attempt_start)
                    progress.epoch_seconds = now - epoch_start
                    if stop == INTERRUPTED:
                        return Outcome("interrupted", epoch=progress.epoch, last_report=report)
                    return Outcome(
                        "timeout",
                        epoch=progress.epoch,
                        message=f"training took longer than max_seconds={spec.max_seconds:g} "
                        f"during epoch {epoch}",
                        last_report=report,
                    )
                hooks.before_batch(epoch, batch, n_batches)
                if batch == 0 and self.optimizer is not None:
                    progress.lr = float(self.optimizer.param_groups[0]["lr"])
                self._step(order, batch)
            self._block = None
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
            # Both before the hooks, so the checkpoint they may take holds their new state.
            self.early_stopping.observe(report, self.module)
            self._schedule_epoch(report)
            hooks.epoch_finished(report, self)
        return self._finish(report)

    def _agree(self, stop: int) -> int:
        """The replicas' common decision: stop if any was interrupted or rank 0 timed out."""
        agreement = self._agreement
        assert agreement is not None
        agreement.fill_(stop)
        distributed.all_reduce(agreement, op=distributed.ReduceOp.MAX)
        return int(agreement.item())

    def _step(self, order: torch.Tensor | None, batch: int) -> None:
        """One optimizer step: a minibatch, the full batch (LBFGS), or the direct solve."""
        if self._closed_form:
            assert isinstance(self.spec.optimizer, ClosedFormOptimizer)
            solve_least_squares(self.module, self.train_x, self.train_y, l2=self.spec.optimizer.l2)
            return
        optimizer = self.optimizer
        assert optimizer is not None
        if order is None:
            # LBFGS takes a closure that returns the loss tensor, whatever torch's stub says.
            optimizer.step(self._full_batch_loss)  # type: ignore[arg-type]
        else:
            optimizer.zero_grad(set_to_none=True)
            if self.replica is None:
                loss = self._batch_loss(order, batch)
            else:
                batch_size = self.spec.batch_size
                loss = self._shard_loss(order[batch * batch_size : (batch + 1) * batch_size])
            loss.backward()
            if self.spec.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(self.module.parameters(), self.spec.grad_clip_norm)
            optimizer.step()
        if self._steps_schedule:
            assert self.scheduler is not None
            self.scheduler.step()

    def _batch_loss(self, order: torch.Tensor, batch: int) -> torch.Tensor:
        """The mean loss over a batch's training rows."""
        assert self._forward is not None
        features, targets = self._batch_rows(order, batch)
        with self._precision:
            return self.loss_fn(self._forward(features), targets)

    def _batch_rows(self, order: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's features and targets: views of the block of batches gathered with it."""
        size, per_block = self.spec.batch_size, self._block_batches
        block = batch // per_block
        if self._block is None or self._block[0] is not order or self._block[1] != block:
            start = block * per_block * size
            positions = order[start : start + per_block * size]
            if self._block_buffer is None:
                matrix = self.train_x.matrix
                rows = min(len(self.train_x), per_block * size)
                self._block_buffer = matrix.new_empty((rows, *matrix.shape[1:]))
            # The previous block's batches are done with: their steps' graphs are freed.
            features = self.train_x.take(positions, out=self._block_buffer[: len(positions)])
            self._block = (order, block, features, self.fit_y.index_select(0, positions))
        _, _, features, targets = self._block
        offset = (batch % per_block) * size
        return features[offset : offset + size], targets[offset : offset + size]

    def _shard_loss(self, positions: torch.Tensor) -> torch.Tensor:
        """This replica's part of a batch's loss, scaled so DDP's average is the batch mean.

        DDP averages the replicas' gradients; a shard's mean loss weighted by its share of the
        batch times the world size makes that average the gradient of the mean over the whole
        batch, however unevenly the batch splits.
        """
        assert self._forward is not None and self.replica is not None
        rank, world_size = self.replica.rank, self.replica.world_size
        shard = positions.tensor_split(world_size)[rank]
        features = self.train_x.take(shard)
        with self._precision:
            output = self._forward(features)
            if len(shard) == 0:
                # The all-reduce of the gradients still needs this replica's (zero) part.
                return output.sum() * 0
            loss = self.loss_fn(output, self.fit_y.index_select(0, shard))
        return loss * (len(shard) * world_size / len(positions))

    def _full_batch_loss(self) -> torch.Tensor:
        """LBFGS's closure: the mean loss over all training rows, gradients summed by chunk."""
        assert self.optimizer is not None and self._forward is not None
        self.optimizer.zero_grad(set_to_none=True)
        n_rows = len(self.train_x)
        total = torch.zeros((), device=self.device)
        for features, targets in zip(
            self.train_x.chunks(EVAL_CHUNK_ROWS),
            torch.split(self.fit_y, EVAL_CHUNK_ROWS),
            strict=True,
        ):
            # Every loss here is a mean over rows, so chunk means weighted by size add up.
            with self._precision:
                loss = self.loss_fn(self._forward(features), targets)
            loss = loss * (features.shape[0] / n_rows)
            loss.backward()
            total += loss.detach()
        return total

    def _schedule_epoch(self, report: EpochReport) -> None:
        """Step an epoch-wise schedule (one-cycle steps every batch instead)."""
        if self.scheduler is None or isinstance(self.spec.scheduler, OneCycleSchedule):
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            assert isinstance(self.spec.scheduler, PlateauSchedule)
            watched = report.value(self.spec.scheduler.metric)
            # The spec admits a plateau schedule only on a metric every epoch reports.
            assert watched is not None
            self.scheduler.step(watched)
        else:
            self.scheduler.step()

    def _finish(self, report: EpochReport | None) -> Outcome:
        """The outcome of a run whose epochs are done or that early stopping ended."""
        progress, early = self._progress, self.early_stopping
        if early.restore_best(self.module):
            best = early.state.best_report
            report = None if best is None else EpochReport(**best)
        if report is None and progress.epoch > 0:
            # Resumed from the last epoch's checkpoint: report what that epoch left.
            report = self._evaluate(progress.epoch, seconds=0.0)
        if early.options is None:
            return Outcome("completed", epoch=progress.epoch, last_report=report)
        return Outcome(
            "completed",
            epoch=progress.epoch,
            last_report=report,
            stopped_early_at=progress.epoch if early.stopped else None,
            best_epoch=early.state.best_epoch,
        )

    @torch.no_grad()
    def _evaluate(self, epoch: int, *, seconds: float) -> EpochReport:
        self.module.eval()
        train_loss, train_metrics = self.scorer(self.train_x, self.train_y)
        metrics = {f"train_{name}": value for name, value in train_metrics.items()}
        val_loss = None
        if len(self.val_y):
            val_loss, val_metrics = self.scorer(self.val_x, self.val_y)
            metrics.update({f"val_{name}": value for name, value in val_metrics.items()})
        if self._progress.lr is not None:
            metrics["lr"] = self._progress.lr
        return EpochReport(epoch, train_loss, val_loss, metrics, seconds)


def estimation_error(trainer: Trainer) -> dict[str, list[float] | float] | None:
    """d2l's "error in estimating w and b": truth minus learned, in the original feature scale."""
    truth = trainer.table.truth
    if truth is None or trainer.spec.model.type != "linear":
        return None
    w, b = linear_coefficients(trainer.module)
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
