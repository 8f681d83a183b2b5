"""Optuna's samplers and pruners over rebuilt studies: the decisions a sweep's rows lead to."""

from typing import Any

import pytest

from app.sweeps.schemas import SweepRequest
from app.sweeps.search import Search, TrialRecord, grid_size, set_path


def request(**overrides: Any) -> SweepRequest:
    """A sweep over a learning rate and a layer choice."""
    body: dict[str, Any] = {
        "base": {"dataset": {"type": "synthetic_linear"}},
        "space": {
            "optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 0.1},
            "model.hidden": {"type": "choice", "values": [[16], [64, 64]]},
        },
        "objective": {"metric": "train_loss"},
        **overrides,
    }
    return SweepRequest.model_validate(body)


def record(
    number: int, proposal_params: dict[str, Any], outcome: str, values: dict[int, float]
) -> TrialRecord:
    """A trial as the database would give it back."""
    return TrialRecord(
        number=number,
        sampler_params=proposal_params,
        system_attrs={},
        outcome=outcome,  # type: ignore[arg-type]
        value=values[max(values)] if outcome == "complete" and values else None,
        intermediate=values,
    )


def test_proposals_depend_on_seed_and_number_only() -> None:
    search = Search(request(seed=3))
    first = search.propose([], 0)
    assert search.propose([], 0) == first
    assert Search(request(seed=3)).propose([], 1) != first
    assert Search(request(seed=4)).propose([], 0) != first
    assert first.params["model.hidden"] in ([16], [64, 64])
    assert first.params["model.hidden"] == [[16], [64, 64]][first.sampler_params["model.hidden"]]
    assert 1e-4 <= first.params["optimizer.lr"] <= 0.1


def test_grid_proposes_every_combination_once() -> None:
    grid = request(
        strategy={"type": "grid"},
        space={
            "optimizer.lr": [0.1, 0.01, 0.001],
            "batch_size": {"type": "choice", "values": [5, 9]},
        },
    )
    search = Search(grid)
    records: list[TrialRecord] = []
    for number in range(grid_size(grid)):
        proposal = search.propose(records, number)
        records.append(
            TrialRecord(
                number=number,
                sampler_params=proposal.sampler_params,
                system_attrs=proposal.system_attrs,
                outcome="running",
                value=None,
                intermediate={},
            )
        )
    seen = {tuple(sorted(r.sampler_params.items())) for r in records}
    assert len(seen) == 6


def test_median_pruner_stops_a_trial_behind_the_finished_ones() -> None:
    search = Search(request(pruner={"type": "median", "min_trials": 2}))
    done = [
        record(0, {"optimizer.lr": 0.01, "model.hidden": 0}, "complete", {1: 0.5, 2: 0.3}),
        record(1, {"optimizer.lr": 0.02, "model.hidden": 1}, "complete", {1: 0.6, 2: 0.4}),
    ]
    behind = record(2, {"optimizer.lr": 0.001, "model.hidden": 0}, "running", {1: 5.0})
    ahead = record(2, {"optimizer.lr": 0.03, "model.hidden": 0}, "running", {1: 0.1})
    assert search.should_prune([*done, behind], 2)[0] is True
    assert search.should_prune([*done, ahead], 2)[0] is False


def test_asha_records_its_rungs_on_the_trial() -> None:
    search = Search(request(pruner={"type": "asha", "min_resource": 1, "reduction_factor": 2}))
    first = record(0, {"optimizer.lr": 0.01, "model.hidden": 0}, "running", {1: 0.2})
    decision, attrs = search.should_prune([first], 0)
    assert decision is False
    assert any(key.startswith("completed_rung") for key in attrs)


def test_set_path_puts_values_into_nested_specs_and_refuses_scalars() -> None:
    spec = {"optimizer": {"type": "sgd", "lr": 0.03}, "epochs": 3}
    assert set_path(spec, "optimizer.lr", 0.1) == {
        "optimizer": {"type": "sgd", "lr": 0.1},
        "epochs": 3,
    }
    assert spec["optimizer"]["lr"] == 0.03
    with pytest.raises(KeyError):
        set_path(spec, "epochs.x", 1)
