"""The training engine on its own: no API, no database."""

import pytest
import torch

from app.training.data import materialize
from app.training.engine import Trainer, estimation_error
from app.training.evaluation import EpochReport
from app.training.serialization import export_weights, import_weights, read_architecture
from app.training.spec import RunRequest, resolve_spec
from tests.helpers import D2L_SPEC, long_spec


class Recorder:
    """Hooks that record epochs and can interrupt after a number of batches."""

    def __init__(self, stop_after_batches: int | None = None) -> None:
        self.reports: list[EpochReport] = []
        self.batches = 0
        self.stop_after_batches = stop_after_batches

    def interrupted(self) -> bool:
        return self.stop_after_batches is not None and self.batches >= self.stop_after_batches

    def before_batch(self, epoch: int, batch: int, n_batches: int) -> None:
        self.batches += 1

    def epoch_finished(self, report: EpochReport, trainer: Trainer) -> None:
        self.reports.append(report)


def trainer_for(body: dict) -> Trainer:
    spec = resolve_spec(RunRequest.model_validate(body))
    return Trainer(
        spec=spec, table=materialize(spec.dataset, spec.task), device=torch.device("cpu")
    )


def test_d2l_linear_regression_recovers_w_and_b():
    trainer = trainer_for(D2L_SPEC)
    hooks = Recorder()
    outcome = trainer.run(hooks)
    assert outcome.status == "completed"
    losses = [report.train_loss for report in hooks.reports]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    error = estimation_error(trainer)
    assert error is not None
    assert max(abs(value) for value in error["w"]) < 0.01
    assert abs(error["b"]) < 0.01


def test_estimation_error_is_in_the_original_scale_when_standardizing():
    trainer = trainer_for({**D2L_SPEC, "standardize": True, "epochs": 5})
    trainer.run(Recorder())
    error = estimation_error(trainer)
    assert error is not None
    assert error["learned_w"] == pytest.approx([2.0, -3.4], abs=0.01)
    assert error["learned_b"] == pytest.approx(4.2, abs=0.01)


def test_same_seed_same_weights_and_different_seed_different_weights():
    def weights(seed: int) -> list[torch.Tensor]:
        trainer = trainer_for(long_spec(epochs=2, seed=seed))
        trainer.run(Recorder())
        return list(trainer.module.state_dict().values())

    first, second, other = weights(3), weights(3), weights(4)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("stop_after_batches", [1, 125, 190])
def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(stop_after_batches: int):
    uninterrupted = trainer_for(long_spec(epochs=2))
    uninterrupted.run(Recorder())

    interrupted = trainer_for(long_spec(epochs=2))
    outcome = interrupted.run(Recorder(stop_after_batches=stop_after_batches))
    assert outcome.status == "interrupted"
    checkpoint = interrupted.checkpoint()

    torch.manual_seed(12345)  # a fresh process would not share the global RNG state
    resumed = trainer_for(long_spec(epochs=2))
    resumed.restore(checkpoint)
    assert resumed.run(Recorder()).status == "completed"
    for name, tensor in uninterrupted.module.state_dict().items():
        assert torch.equal(tensor, resumed.module.state_dict()[name]), name


def test_divergence_is_reported_at_its_epoch():
    spec = {**D2L_SPEC, "optimizer": {"type": "sgd", "lr": 1e6}}
    outcome = trainer_for(spec).run(Recorder())
    assert outcome.status == "diverged"
    assert outcome.epoch == 1
    assert "epoch 1" in (outcome.message or "")


def test_timeout_stops_training():
    outcome = trainer_for(long_spec(epochs=50, max_seconds=0.2)).run(Recorder())
    assert outcome.status == "timeout"
    assert "max_seconds" in (outcome.message or "")


def test_validation_split_is_stratified_and_reported():
    trainer = trainer_for(long_spec(epochs=1, validation_split=0.25))
    hooks = Recorder()
    trainer.run(hooks)
    counts = torch.bincount(trainer.val_y, minlength=3)
    assert int(counts.sum()) == 500
    assert int(counts.max() - counts.min()) <= 1
    assert hooks.reports[0].val_loss is not None
    assert "val_accuracy" in hooks.reports[0].metrics


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("loss", ["mse", "l1", "huber"])
def test_every_regression_loss_and_optimizer_learns(loss: str, optimizer: str):
    lr = {"sgd": 0.03, "adam": 0.05, "adamw": 0.05}[optimizer]
    spec = {**D2L_SPEC, "loss": loss, "optimizer": {"type": optimizer, "lr": lr}, "epochs": 5}
    hooks = Recorder()
    assert trainer_for(spec).run(hooks).status == "completed"
    assert hooks.reports[-1].metrics["train_rmse"] < 0.2


def test_weights_round_trip_through_safetensors_with_architecture():
    trainer = trainer_for(long_spec(epochs=1, standardize=True))
    trainer.run(Recorder())
    exported = export_weights(trainer.module, trainer.architecture)
    assert exported.data[8:9] == b"{"  # a safetensors JSON header, not a pickle
    architecture = read_architecture(exported.data)
    assert architecture.classes == [0, 1, 2]
    assert architecture.standardize
    module = import_weights(exported.data)
    rows = torch.randn(5, 8)
    trainer.module.eval()
    assert torch.equal(module(rows), trainer.module(rows))
