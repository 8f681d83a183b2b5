"""Learning-rate schedules, gradient clipping and early stopping; resume and seeds with them."""

import json
from typing import Any

import pytest
import torch

from app.errors import InvalidInputError
from app.training.engine import Outcome, Trainer
from app.training.evaluation import EpochReport
from app.training.serialization import CheckpointBlob
from app.worker.attempt import _final_metrics
from tests.helpers import D2L_SPEC, long_spec
from tests.unit.test_engine import Recorder, trainer_for

SCHEDULES: dict[str, dict[str, Any]] = {
    "step": {"type": "step", "step_size": 2, "gamma": 0.5},
    "cosine": {"type": "cosine", "eta_min": 0.001},
    "onecycle": {"type": "onecycle", "max_lr": 0.05, "pct_start": 0.4},
    # mode max on a falling loss: no epoch improves, so the lr is cut every epoch.
    "plateau": {"type": "plateau", "metric": "train_loss", "mode": "max", "patience": 0},
}
# Every epoch after the first misses this improvement, so patience runs out on schedule.
NEVER_BETTER = 1e9


def torch_lrs(name: str, *, epochs: int, batches: int, lr: float, losses: list[float]) -> list:
    """The lr torch's own scheduler gives at the start of each epoch."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=lr)
    schedulers = torch.optim.lr_scheduler
    scheduler = {
        "step": lambda: schedulers.StepLR(optimizer, step_size=2, gamma=0.5),
        "cosine": lambda: schedulers.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.001),
        "onecycle": lambda: schedulers.OneCycleLR(
            optimizer,
            max_lr=0.05,
            total_steps=epochs * batches,
            pct_start=0.4,
            cycle_momentum=False,
        ),
        "plateau": lambda: schedulers.ReduceLROnPlateau(optimizer, mode="max", patience=0),
    }[name]()
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        for _ in range(batches if name == "onecycle" else 1):
            optimizer.step()
            if name == "onecycle":
                scheduler.step()
        if name == "plateau":
            scheduler.step(losses[epoch])
        elif name != "onecycle":
            scheduler.step()
    return lrs


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_each_schedule_sets_the_lr_as_torch_does_and_records_it(name: str):
    trainer = trainer_for(long_spec(epochs=4, scheduler=SCHEDULES[name]))
    hooks = Recorder()
    assert trainer.run(hooks).status == "completed"
    recorded = [report.metrics["lr"] for report in hooks.reports]
    expected = torch_lrs(
        name,
        epochs=4,
        batches=trainer.batches_per_epoch,
        lr=0.01,
        losses=[report.train_loss for report in hooks.reports],
    )
    assert recorded == expected
    assert len(set(recorded)) > 1


def test_without_a_schedule_the_lr_is_recorded_unchanged():
    hooks = Recorder()
    trainer_for(D2L_SPEC).run(hooks)
    assert [report.metrics["lr"] for report in hooks.reports] == [0.03, 0.03, 0.03]


def test_gradient_clipping_bounds_each_step():
    def step_size(clip: float | None) -> float:
        trainer = trainer_for(
            D2L_SPEC
            | {
                "optimizer": {"type": "sgd", "lr": 1.0},
                "epochs": 1,
                "batch_size": 1000,
                "grad_clip_norm": clip,
            }
        )
        before = torch.cat([p.detach().clone().flatten() for p in trainer.module.parameters()])
        trainer.run(Recorder())
        after = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])
        return float((after - before).norm())

    assert step_size(None) > 1.0
    assert step_size(1e-3) == pytest.approx(1e-3, rel=1e-4)


def early(**options: Any) -> dict[str, Any]:
    return long_spec(
        epochs=10,
        validation_split=0.25,
        early_stopping={"metric": "val_loss", "patience": 2, **options},
    )


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return trainer.module.state_dict()


def assert_same_weights(first: Trainer, second: Trainer) -> None:
    for name, tensor in weights(first).items():
        assert torch.equal(tensor, weights(second)[name]), name


def trained(body: dict[str, Any]) -> tuple[Trainer, Outcome, list[EpochReport]]:
    trainer, hooks = trainer_for(body), Recorder()
    outcome = trainer.run(hooks)
    return trainer, outcome, hooks.reports


def test_early_stopping_stops_when_patience_runs_out_and_restores_the_best_epoch():
    trainer, outcome, reports = trained(early(min_delta=NEVER_BETTER))
    assert (outcome.status, outcome.epoch) == ("completed", 3)
    assert (outcome.stopped_early_at, outcome.best_epoch) == (3, 1)
    assert len(reports) == 3
    assert outcome.last_report == reports[0]
    first_epoch, _, _ = trained(long_spec(epochs=1, validation_split=0.25))
    assert_same_weights(trainer, first_epoch)
    metrics = _final_metrics(outcome.last_report, outcome)
    assert (metrics["epoch"], metrics["best_epoch"], metrics["early_stopped_at"]) == (1, 1, 3)


def test_early_stopping_keeps_the_last_weights_unless_asked():
    trainer, outcome, reports = trained(early(min_delta=NEVER_BETTER, restore_best=False))
    assert (outcome.stopped_early_at, outcome.best_epoch) == (3, 1)
    assert outcome.last_report == reports[-1]
    three_epochs, _, _ = trained(long_spec(epochs=3, validation_split=0.25))
    assert_same_weights(trainer, three_epochs)


def test_a_run_that_never_runs_out_of_patience_still_ends_with_its_best_weights():
    body = early(min_delta=NEVER_BETTER, patience=5) | {"epochs": 3}
    trainer, outcome, _ = trained(body)
    assert (outcome.epoch, outcome.stopped_early_at, outcome.best_epoch) == (3, None, 1)
    first_epoch, _, _ = trained(long_spec(epochs=1, validation_split=0.25))
    assert_same_weights(trainer, first_epoch)


def test_early_stopping_on_a_rising_metric_watches_for_a_maximum():
    _, outcome, reports = trained(early(metric="val_accuracy", patience=1))
    accuracies = [report.metrics["val_accuracy"] for report in reports]
    assert outcome.best_epoch == 1 + accuracies.index(max(accuracies))
    if outcome.stopped_early_at is not None:
        assert accuracies[-1] <= accuracies[-2]


RESUMABLE: dict[str, dict[str, Any]] = {
    **{name: long_spec(epochs=4, scheduler=schedule) for name, schedule in SCHEDULES.items()},
    "early_stopping": early(min_delta=NEVER_BETTER) | {"scheduler": SCHEDULES["plateau"]},
    "clipped_onecycle": long_spec(
        epochs=3,
        optimizer={"type": "sgd", "lr": 0.1, "momentum": 0.9},
        scheduler=SCHEDULES["onecycle"],
        grad_clip_norm=0.5,
    ),
    "lbfgs": long_spec(
        epochs=5,
        optimizer={"type": "lbfgs", "max_iter": 4},
        scheduler=SCHEDULES["step"],
        early_stopping={"metric": "train_loss", "patience": 2, "min_delta": NEVER_BETTER},
    ),
}


def measured(report: EpochReport | None) -> tuple | None:
    """What a report measured, without its timing."""
    return (
        None
        if report is None
        else (report.epoch, report.train_loss, report.val_loss, report.metrics)
    )


def through_the_database(blob: CheckpointBlob) -> CheckpointBlob:
    """The checkpoint as a JSON column gives it back; PostgreSQL refuses NaN and Infinity."""
    return CheckpointBlob(blob.tensors, json.loads(json.dumps(blob.state, allow_nan=False)))


@pytest.mark.parametrize("where", ["mid_epoch", "epoch_end"])
@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resume_is_bit_identical_with_schedules_and_early_stopping(name: str, where: str):
    body = RESUMABLE[name]
    straight, outcome, reports = trained(body)

    interrupted = trainer_for(body)
    n_batches = interrupted.batches_per_epoch
    stop_after = n_batches + (n_batches // 2 if where == "mid_epoch" else n_batches)
    stop_after = min(stop_after, n_batches * (outcome.epoch - 1) + n_batches // 2)
    assert interrupted.run(Recorder(stop_after_batches=stop_after)).status == "interrupted"
    checkpoint = through_the_database(interrupted.checkpoint())

    torch.manual_seed(12345)  # a fresh process would not share the global RNG state
    resumed = trainer_for(body)
    resumed.restore(checkpoint)
    hooks = Recorder()
    resumed_outcome = resumed.run(hooks)
    assert_same_weights(straight, resumed)
    assert (resumed_outcome.epoch, resumed_outcome.stopped_early_at) == (
        outcome.epoch,
        outcome.stopped_early_at,
    )
    assert resumed_outcome.best_epoch == outcome.best_epoch
    later = reports[len(reports) - len(hooks.reports) :]
    assert [measured(report) for report in hooks.reports] == [measured(r) for r in later]


class CheckpointEveryEpoch(Recorder):
    """Checkpoints after each epoch, as a worker does when `checkpoint_every` is 1."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoint: CheckpointBlob | None = None

    def epoch_finished(self, report: EpochReport, trainer: Trainer) -> None:
        super().epoch_finished(report, trainer)
        self.checkpoint = through_the_database(trainer.checkpoint())


def test_a_run_resumed_after_its_stopping_epoch_ends_at_once():
    # A worker lost between recording the stopping epoch and finishing the run.
    stopping, hooks = trainer_for(early(min_delta=NEVER_BETTER)), CheckpointEveryEpoch()
    outcome = stopping.run(hooks)
    assert hooks.checkpoint is not None and outcome.stopped_early_at == 3
    resumed = trainer_for(early(min_delta=NEVER_BETTER))
    resumed.restore(hooks.checkpoint)
    after = Recorder()
    again = resumed.run(after)
    assert after.reports == []
    assert (again.status, again.stopped_early_at, again.best_epoch) == ("completed", 3, 1)
    assert measured(again.last_report) == measured(outcome.last_report)
    assert_same_weights(stopping, resumed)

    keep_last = early(min_delta=NEVER_BETTER, restore_best=False)
    stopping, hooks = trainer_for(keep_last), CheckpointEveryEpoch()
    outcome = stopping.run(hooks)
    resumed = trainer_for(keep_last)
    assert hooks.checkpoint is not None
    resumed.restore(hooks.checkpoint)
    again = resumed.run(Recorder())
    assert measured(again.last_report) == measured(outcome.last_report)
    assert_same_weights(stopping, resumed)


@pytest.mark.parametrize(
    "body",
    [
        long_spec(epochs=3, scheduler=SCHEDULES["onecycle"], grad_clip_norm=1.0),
        early(patience=1) | {"scheduler": {"type": "plateau", "patience": 1}},
    ],
    ids=["onecycle_clipped", "early_stopping_plateau"],
)
def test_the_same_seed_gives_the_same_weights_with_schedules_and_early_stopping(body):
    first, first_outcome, _ = trained(body)
    second, second_outcome, _ = trained(body)
    assert_same_weights(first, second)
    ends = [(o.epoch, o.stopped_early_at, o.best_epoch) for o in (first_outcome, second_outcome)]
    assert ends[0] == ends[1]


def test_a_onecycle_run_cannot_be_resumed_with_another_length():
    body = long_spec(epochs=2, scheduler=SCHEDULES["onecycle"])
    first = trainer_for(body)
    first.run(Recorder(stop_after_batches=10))
    longer = trainer_for(body | {"epochs": 4})
    with pytest.raises(InvalidInputError, match="onecycle") as refused:
        longer.restore(first.checkpoint())
    assert refused.value.loc == ("body", "epochs")


def test_checkpoints_written_before_schedules_existed_still_restore():
    straight, _, _ = trained(long_spec(epochs=2))
    first = trainer_for(long_spec(epochs=2))
    first.run(Recorder(stop_after_batches=150))
    blob = first.checkpoint()
    del blob.state["progress"]["lr"], blob.state["optimizer"]["lists"]
    resumed = trainer_for(long_spec(epochs=2))
    resumed.restore(blob)
    resumed.run(Recorder())
    assert_same_weights(straight, resumed)
