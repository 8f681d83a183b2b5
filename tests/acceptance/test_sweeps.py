"""Hyperparameter sweeps with real workers: Optuna's samplers and pruners, state in the database."""

from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import func, select

from app.config import Settings
from app.database import make_engine
from app.sweeps.models import SweepTrial
from tests.helpers import ApiProcess, LocalWorkers, wait_until

CLASSIFICATION_BASE: dict[str, Any] = {
    "dataset": {"type": "synthetic_classification", "n_samples": 300, "n_features": 4},
    "model": {"type": "mlp", "hidden": [16]},
    "optimizer": {"type": "adam", "lr": 0.01},
    "epochs": 9,
    "batch_size": 50,
    "validation_split": 0.25,
    "seed": 1,
}


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    """Post a sweep and return its body, asserting it was created."""
    response = client.post("/sweeps", json=body)
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/sweeps/{response.json()['id']}"
    return response.json()


def wait_for_sweep(client: httpx.Client, sweep_id: int, timeout: float = 240) -> dict[str, Any]:
    """Poll a sweep until it is no longer running."""

    def done() -> dict[str, Any] | None:
        sweep = client.get(f"/sweeps/{sweep_id}").json()
        return sweep if sweep["status"] != "running" else None

    return wait_until(done, timeout=timeout, message=f"sweep {sweep_id} finished")


def most_open_at_once(client: httpx.Client, run_ids: list[int]) -> int:
    """The most trials that were queued or running at the same moment."""
    runs = [client.get(f"/runs/{run_id}").json() for run_id in run_ids]
    spans = [
        (datetime.fromisoformat(run["created_at"]), datetime.fromisoformat(run["finished_at"]))
        for run in runs
    ]
    return max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)


def test_random_sweep_with_asha_prunes_and_names_the_best(
    client: httpx.Client, workers: LocalWorkers
) -> None:
    # One worker trains the trials one after another (a second waits queued), so every
    # pruning decision sees the same earlier trials on every run of this test: which trials
    # ASHA prunes is decided by the seeds, not by how two workers happen to interleave.
    workers.start()
    sweep = create(
        client,
        base=CLASSIFICATION_BASE,
        space={
            "optimizer.lr": {"type": "loguniform", "low": 1e-5, "high": 0.3},
            "model.hidden": {"type": "choice", "values": [[8], [32, 32]]},
        },
        strategy={"type": "random"},
        pruner={"type": "asha", "min_resource": 1, "reduction_factor": 3},
        objective={"metric": "val_loss", "direction": "minimize"},
        max_runs=12,
        max_concurrent=2,
        seed=0,
    )
    assert sweep["status"] == "running"
    assert len(sweep["trials"]) == 2

    done = wait_for_sweep(client, sweep["id"])

    assert done["status"] == "succeeded", done
    trials = done["trials"]
    assert [trial["number"] for trial in trials] == list(range(12))
    statuses = [trial["status"] for trial in trials]
    assert "pruned" in statuses and "succeeded" in statuses, statuses
    succeeded = [trial for trial in trials if trial["status"] == "succeeded"]
    best = min(succeeded, key=lambda trial: trial["objective"])
    assert done["best_run_id"] == best["run_id"]
    assert all(trial["objective"] is None for trial in trials if trial["status"] == "pruned")
    run_ids = [trial["run_id"] for trial in trials]
    assert most_open_at_once(client, run_ids) <= 2
    # Each trial is an ordinary run, tagged with its sweep and carrying its params.
    tagged = client.get("/runs", params={"tag": f"sweep:{sweep['id']}", "limit": 50}).json()
    assert sorted(run["id"] for run in tagged["items"]) == sorted(run_ids)
    pruned = next(trial for trial in trials if trial["status"] == "pruned")
    run = client.get(f"/runs/{pruned['run_id']}").json()
    assert run["spec"]["optimizer"]["lr"] == pruned["params"]["optimizer.lr"]
    assert run["progress"]["epoch"] < run["progress"]["epochs"]
    # A pruned trial keeps its checkpoint and can be resumed to the end.
    resumed = client.post(f"/runs/{pruned['run_id']}/resume")
    assert resumed.status_code == 200, resumed.text
    wait_until(
        lambda: client.get(f"/runs/{pruned['run_id']}").json()["status"] == "succeeded",
        timeout=60,
        message="resumed trial succeeded",
    )


def test_the_same_seed_proposes_the_same_trials(client: httpx.Client) -> None:
    body: dict[str, Any] = {
        "base": {**CLASSIFICATION_BASE, "epochs": 2},
        "space": {
            "optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 0.1},
            "batch_size": {"type": "int", "low": 8, "high": 64, "step": 8},
            "model.hidden": {"type": "choice", "values": [[8], [16, 16], [32]]},
        },
        "max_runs": 4,
        "max_concurrent": 4,
    }
    first, second, other = (
        create(client, **body, seed=7),
        create(client, **body, seed=7),
        create(client, **body, seed=8),
    )

    def params(sweep: dict[str, Any]) -> list[dict[str, Any]]:
        return [trial["params"] for trial in sweep["trials"]]

    assert len(params(first)) == 4
    assert params(first) == params(second)
    assert params(first) != params(other)
    for sweep in (first, second, other):
        cancelled = client.post(f"/sweeps/{sweep['id']}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert {trial["status"] for trial in cancelled.json()["trials"]} == {"cancelled"}
    again = client.post(f"/sweeps/{first['id']}/cancel")
    assert again.status_code == 409


def test_grid_sweep_runs_every_combination_and_registers_the_best(
    client: httpx.Client, workers: LocalWorkers
) -> None:
    workers.start()
    sweep = create(
        client,
        base={
            "dataset": {"type": "synthetic_linear", "n_samples": 200},
            "epochs": 2,
            "batch_size": 10,
        },
        space={"optimizer.lr": [0.001, 0.03], "batch_size": {"type": "choice", "values": [5, 20]}},
        strategy={"type": "grid"},
        objective={"metric": "train_loss"},
        max_runs=10,
        max_concurrent=3,
        register_best={"model": "grid-best", "alias": "production"},
    )
    assert sweep["total_trials"] == 4

    done = wait_for_sweep(client, sweep["id"])

    assert done["status"] == "succeeded"
    combinations = {
        (trial["params"]["optimizer.lr"], trial["params"]["batch_size"]) for trial in done["trials"]
    }
    assert combinations == {(0.001, 5), (0.001, 20), (0.03, 5), (0.03, 20)}
    best = min(done["trials"], key=lambda trial: trial["objective"])
    assert done["best_run_id"] == best["run_id"]
    model = client.get("/models/grid-best").json()
    assert model["aliases"]["production"] == 1
    assert model["versions"][0]["run_id"] == best["run_id"]


def test_bad_spaces_are_refused_naming_the_entry(client: httpx.Client) -> None:
    base = {"dataset": {"type": "synthetic_linear"}, "epochs": 2}

    def refused(body: dict[str, Any]) -> tuple[list[Any], str]:
        answer = client.post("/sweeps", json={"base": base, **body})
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"][0]
        return detail["loc"], detail["msg"]

    loc, msg = refused({"space": {"model.hiden": [[8]]}, "objective": {"metric": "train_loss"}})
    assert loc == ["body", "space", "model.hiden"]
    assert "hiden" in msg
    loc, msg = refused(
        {"space": {"optimizer.lr": [0.1, -1]}, "objective": {"metric": "train_loss"}}
    )
    assert loc == ["body", "space", "optimizer.lr"]
    assert "-1" in msg
    loc, _msg = refused({"space": {"epochs.x": [1]}, "objective": {"metric": "train_loss"}})
    assert loc == ["body", "space", "epochs.x"]
    loc, _msg = refused(
        {
            "space": {"optimizer.lr": {"type": "uniform", "low": 0.01, "high": 0.1}},
            "strategy": {"type": "grid"},
            "objective": {"metric": "train_loss"},
        }
    )
    assert loc == ["body", "space", "optimizer.lr"]
    loc, msg = refused({"space": {"optimizer.lr": [0.1]}})
    assert loc == ["body", "objective", "metric"]
    assert "validation_split" in msg
    loc, _msg = refused(
        {
            "space": {"optimizer.lr": {"type": "loguniform", "low": 0, "high": 0.1}},
            "objective": {"metric": "train_loss"},
        }
    )
    assert loc[:3] == ["body", "space", "optimizer.lr"]
    assert client.get("/sweeps/999999").status_code == 404


def _trials_recorded(settings: Settings, sweep_id: int) -> int:
    """How many trials the database holds for a sweep, read without any API."""
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return (
                connection.scalar(
                    select(func.count())
                    .select_from(SweepTrial)
                    .where(SweepTrial.sweep_id == sweep_id)
                )
                or 0
            )
    finally:
        engine.dispose()


def test_a_sweep_goes_on_through_an_api_restart(settings: Settings, workers: LocalWorkers) -> None:
    body = {
        "base": {**CLASSIFICATION_BASE, "epochs": 3},
        "space": {"optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}},
        "objective": {"metric": "val_accuracy"},
        "max_runs": 5,
        "max_concurrent": 1,
    }
    with ApiProcess(settings) as first, httpx.Client(base_url=first.url, timeout=30) as client:
        sweep = create(client, **body)
    assert len(sweep["trials"]) == 1
    # No API process runs from here on: the workers alone train the first trial and queue
    # every later one.
    workers.start()
    wait_until(
        lambda: _trials_recorded(settings, sweep["id"]) == 5,
        timeout=120,
        message="every trial queued while no API runs",
    )
    with ApiProcess(settings) as second, httpx.Client(base_url=second.url, timeout=30) as client:
        done = wait_for_sweep(client, sweep["id"])
    assert done["status"] == "succeeded"
    assert len(done["trials"]) == 5
    assert {trial["status"] for trial in done["trials"]} == {"succeeded"}
    best = max(done["trials"], key=lambda trial: trial["objective"])
    assert done["best_run_id"] == best["run_id"]
