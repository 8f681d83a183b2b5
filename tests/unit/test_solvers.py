"""Direct and full-batch solvers, and training on standardized targets."""

import json
from importlib import resources

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from app.training.data import Table
from app.training.engine import Trainer, estimation_error
from app.training.serialization import (
    export_weights,
    import_weights,
    read_architecture,
    read_metadata,
)
from app.training.solvers import linear_coefficients
from app.training.spec import RunRequest, resolve_spec
from tests.unit.test_engine import Recorder, trainer_for

STORED = {"type": "dataset", "id": 1, "target": "y"}


def table_trainer(table: Table, **body) -> Trainer:
    spec = resolve_spec(
        RunRequest.model_validate({"dataset": STORED, **body}), dataset_task="regression"
    )
    return Trainer(spec=spec, table=table, device=torch.device("cpu"))


def as_table(features: np.ndarray, targets: np.ndarray) -> Table:
    return Table(
        torch.from_numpy(features.astype(np.float32)), torch.from_numpy(targets.astype(np.float32))
    )


def prices(n_rows: int = 2000) -> Table:
    """A target in the hundreds from features whose scales span seven orders of magnitude."""
    rng = np.random.default_rng(0)
    scales = np.array([1e-3, 0.1, 1.0, 10.0, 1e3, 1e4])
    features = rng.normal(size=(n_rows, len(scales))) * scales + rng.normal(size=6) * 3 * scales
    weights = rng.normal(size=len(scales)) * 20 / scales
    return as_table(features, 300 + features @ weights + rng.normal(size=n_rows) * 30)


def friedman1() -> Table:
    """The regression table shipped with fitserve (200 rows, 5 features)."""
    source = resources.files("app.datasets").joinpath("builtin", "friedman1.csv")
    with resources.as_file(source) as path:
        data = np.loadtxt(path, delimiter=",", skiprows=1)
    return as_table(data[:, :-1], data[:, -1])


def lstsq(table: Table) -> np.ndarray:
    """Float64 least squares of the table's (float32) numbers: weights, then the intercept."""
    features = table.features.double().numpy()
    design = np.column_stack([features, np.ones(len(features))])
    return np.linalg.lstsq(design, table.targets.double().numpy(), rcond=None)[0]


def learned(trainer: Trainer) -> np.ndarray:
    weights, bias = linear_coefficients(trainer.module)
    return np.append(weights.numpy(), bias)


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def well_conditioned(n_rows: int = 3000, n_features: int = 8) -> Table:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(n_rows, n_features)) + 2.0
    targets = features @ rng.normal(size=n_features) + 5 + rng.normal(size=n_rows) * 0.1
    return as_table(features, targets)


@pytest.mark.parametrize("standardize", [False, True])
def test_closed_form_equals_float64_least_squares(standardize: bool):
    table = well_conditioned()
    trainer = table_trainer(table, optimizer={"type": "closed_form"}, standardize=standardize)
    hooks = Recorder()
    outcome = trainer.run(hooks)
    assert outcome.status == "completed"
    assert relative_difference(learned(trainer), lstsq(table)) <= 1e-6
    # Serving needs nothing new: the stored module predicts in the original units.
    module = import_weights(export_weights(trainer.module, trainer.architecture).data)
    expected = table.features.double().numpy() @ lstsq(table)[:-1] + lstsq(table)[-1]
    with torch.no_grad():
        predicted = module(table.features).double().numpy()
    assert np.max(np.abs(predicted - expected)) / np.max(np.abs(expected)) < 1e-5


def test_closed_form_matches_least_squares_over_many_chunks_with_wild_scales():
    table = prices(n_rows=150_000)  # three chunks of the accumulation
    trainer = table_trainer(table, optimizer={"type": "closed_form"})
    trainer.run(Recorder())
    assert relative_difference(learned(trainer), lstsq(table)) <= 1e-6


@pytest.mark.parametrize(
    ("standardize", "standardize_target"), [(False, False), (False, True), (True, True)]
)
def test_ridge_matches_the_formula_with_an_unpenalised_intercept(
    standardize: bool, standardize_target: bool
):
    table = well_conditioned(n_rows=500)
    l2 = 50.0
    trainer = table_trainer(
        table,
        optimizer={"type": "closed_form", "l2": l2},
        standardize=standardize,
        standardize_target=standardize_target,
    )
    trainer.run(Recorder())
    features, targets = table.features.double().numpy(), table.targets.double().numpy()
    mean, std = np.zeros(features.shape[1]), np.ones(features.shape[1])
    if standardize:  # the penalty is on the weights of the standardized features
        mean = trainer.module.input_mean.double().numpy()
        std = trainer.module.input_std.double().numpy()
    inputs = (features - mean) / std
    centred = inputs - inputs.mean(axis=0)
    weights = np.linalg.solve(
        centred.T @ centred + l2 * np.eye(features.shape[1]),
        centred.T @ (targets - targets.mean()),
    )
    bias = targets.mean() - inputs.mean(axis=0) @ weights
    expected = np.append(weights / std, bias - mean @ (weights / std))
    assert relative_difference(learned(trainer), expected) <= 1e-6
    assert relative_difference(learned(trainer), lstsq(table)) > 1e-4  # the penalty shows


def test_closed_form_takes_the_minimum_norm_solution_for_collinear_features():
    base = well_conditioned(n_rows=400, n_features=3)
    features = torch.cat([base.features, base.features[:, :1]], dim=1)
    trainer = table_trainer(Table(features, base.targets), optimizer={"type": "closed_form"})
    trainer.run(Recorder())
    weights = learned(trainer)
    assert weights[0] == pytest.approx(weights[3], rel=1e-5)
    single = lstsq(base)
    assert weights[0] + weights[3] == pytest.approx(single[0], rel=1e-5)
    assert weights[-1] == pytest.approx(single[-1], rel=1e-5)


def test_closed_form_records_one_epoch_with_the_usual_metrics():
    trainer = trainer_for(
        {
            "dataset": {"type": "synthetic_linear", "noise": 0.01},
            "optimizer": {"type": "closed_form"},
            "validation_split": 0.2,
        }
    )
    assert trainer.spec.epochs == 1
    hooks = Recorder()
    outcome = trainer.run(hooks)
    assert (outcome.status, outcome.epoch, len(hooks.reports)) == ("completed", 1, 1)
    assert set(hooks.reports[0].metrics) == {"train_rmse", "train_r2", "val_rmse", "val_r2"}
    assert hooks.reports[0].val_loss is not None
    error = estimation_error(trainer)
    assert error is not None
    assert max(abs(value) for value in error["w"]) < 2e-3
    assert abs(error["b"]) < 2e-3


@pytest.mark.parametrize("table", [friedman1, prices], ids=["friedman1", "prices"])
def test_standardized_adam_reaches_the_closed_form_r2(table):
    data = table()
    exact = table_trainer(data, optimizer={"type": "closed_form"})
    best = exact.run(Recorder()).last_report
    adam = table_trainer(
        data,
        optimizer={"type": "adam", "lr": 0.05},
        scheduler={"type": "cosine"},
        standardize=True,
        epochs=30,
        batch_size=32,
    )
    trained = adam.run(Recorder()).last_report
    assert best is not None and trained is not None
    assert trained.metrics["train_r2"] >= best.metrics["train_r2"] - 0.005


def test_targets_are_standardized_for_training_and_predictions_come_back_in_units():
    data = prices(n_rows=500)
    trainer = table_trainer(data, optimizer={"type": "adam", "lr": 0.05}, standardize=True)
    assert trainer.architecture.standardize_target
    assert float(trainer.fit_y.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(trainer.fit_y.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    hooks = Recorder()
    trainer.run(hooks)
    exported = export_weights(trainer.module, trainer.architecture)
    assert read_architecture(exported.data).standardize_target
    module = import_weights(exported.data)
    with torch.no_grad():
        predictions = module(data.features)
    rmse = float(((predictions - data.targets) ** 2).mean().sqrt())
    # Losses and metrics are in the target's own units, like those of an unscaled run.
    assert rmse == pytest.approx(hooks.reports[-1].metrics["train_rmse"], rel=1e-5)
    assert hooks.reports[-1].train_loss == pytest.approx(rmse**2, rel=1e-4)


def test_standardize_target_can_be_turned_off():
    trainer = table_trainer(prices(n_rows=100), standardize=True, standardize_target=False)
    assert not trainer.architecture.standardize_target
    assert trainer.fit_y is trainer.train_y
    assert "target_mean" not in trainer.module.state_dict()


def test_weights_files_without_target_statistics_still_load():
    trainer = table_trainer(prices(n_rows=100), standardize=True, standardize_target=False)
    exported = export_weights(trainer.module, trainer.architecture).data
    # The file as written before targets could be standardized: no such key in its metadata.
    metadata = json.loads(read_metadata(exported)["fitserve"])
    del metadata["standardize_target"]
    older = save_tensors(load_tensors(exported), metadata={"fitserve": json.dumps(metadata)})
    assert not read_architecture(older).standardize_target
    rows = torch.randn(4, 6)
    trainer.module.eval()
    with torch.no_grad():
        assert torch.equal(import_weights(older)(rows), trainer.module(rows))


def test_lbfgs_reaches_the_least_squares_solution_on_a_linear_model():
    data = friedman1()
    trainer = table_trainer(data, optimizer={"type": "lbfgs"}, standardize=True, epochs=3)
    hooks = Recorder()
    assert trainer.run(hooks).status == "completed"
    assert relative_difference(learned(trainer), lstsq(data)) <= 1e-4
    assert hooks.reports[-1].metrics["lr"] == 1.0


def test_lbfgs_trains_an_mlp_beyond_the_linear_fit():
    data = friedman1()
    trainer = table_trainer(
        data,
        model={"type": "mlp", "hidden": [32]},
        optimizer={"type": "lbfgs", "max_iter": 50},
        standardize=True,
        epochs=2,
    )
    hooks = Recorder()
    assert trainer.run(hooks).status == "completed"
    assert [report.epoch for report in hooks.reports] == [1, 2]
    assert hooks.reports[-1].metrics["train_r2"] > 0.95  # the linear fit reaches 0.765
