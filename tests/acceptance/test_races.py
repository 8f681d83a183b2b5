"""Concurrent requests and wake-ups: what must hold when things happen at the same time."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.helpers import (
    D2L_SPEC,
    ApiServer,
    LocalWorkers,
    long_spec,
    post_run,
    wait_for,
    wait_until,
)


def _at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def _trained(client: httpx.Client, **changes: Any) -> dict[str, Any]:
    run = wait_for(client, post_run(client, {**D2L_SPEC, **changes})["id"])
    assert run["status"] == "succeeded", run
    return run


@pytest.mark.parametrize("source", ["pool", "notify"])
def test_a_queued_run_wakes_an_idle_worker_without_polling(
    client: httpx.Client, workers: LocalWorkers, settings: Settings, source: str
):
    if source == "notify" and not settings.database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite workers outside a pool poll")
    # Polling once a minute: only a wake-up can start the second run within the deadline.
    workers.start(poll_seconds=60.0, pool_wakeup=source == "pool")
    _trained(client)
    wait_until(
        lambda: (listed := client.get("/workers").json()) and listed[0]["current_run_id"] is None,
        message="the worker idle",
    )
    run = wait_for(client, post_run(client, {**D2L_SPEC, "seed": 1})["id"], timeout=20)
    assert run["status"] == "succeeded", run


def test_concurrent_retries_with_one_idempotency_key_make_one_run(client: httpx.Client):
    answers = _at_once(
        [
            lambda: client.post("/runs", json=D2L_SPEC, headers={"Idempotency-Key": "twice"})
            for _ in range(6)
        ]
    )
    assert sorted(answer.status_code for answer in answers) == [200] * 5 + [201]
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert len(client.get("/runs").json()["items"]) == 1


def test_concurrent_registrations_of_a_new_name_number_their_versions(
    client: httpx.Client, workers: LocalWorkers
):
    workers.start()
    runs = [_trained(client, seed=seed)["id"] for seed in range(3)]
    answers = _at_once(
        [
            lambda run_id=run_id: client.post("/models", json={"name": "race", "run_id": run_id})
            for run_id in runs
        ]
    )
    assert [answer.status_code for answer in answers] == [201, 201, 201], [a.text for a in answers]
    versions = client.get("/models/race").json()["versions"]
    assert sorted(version["version"] for version in versions) == [1, 2, 3]
    assert sorted(version["run_id"] for version in versions) == sorted(runs)


def test_racing_alias_moves_leave_one_answer_that_predict_agrees_with(
    client: httpx.Client, workers: LocalWorkers
):
    workers.start()
    for seed in range(2):
        run_id = _trained(client, seed=seed)["id"]
        client.post("/models", json={"name": "moving", "run_id": run_id}).raise_for_status()
    moves = [
        lambda version=version: client.put(
            "/models/moving/aliases/production", json={"version": version}
        )
        for version in (1, 2) * 4
    ]
    assert {answer.status_code for answer in _at_once(moves)} == {200}
    aliased = client.get("/models/moving").json()["aliases"]["production"]
    answer = client.post("/predict", json={"model": "moving@production", "inputs": [[1, 1]]}).json()
    assert answer["version"] == aliased


def test_predictions_racing_a_delete_answer_200_or_404_and_404_after(
    client: httpx.Client, workers: LocalWorkers, api: ApiServer
):
    workers.start()
    run_id = _trained(client)["id"]
    body = {"run_id": run_id, "inputs": [[1, 1]]}
    assert client.post("/predict", json=body).status_code == 200  # cached now

    def predict_many() -> set[int]:
        return {client.post("/predict", json=body).status_code for _ in range(40)}

    codes = _at_once(
        [predict_many, predict_many, lambda: {client.delete(f"/runs/{run_id}").status_code}]
    )
    assert set().union(*codes) <= {200, 204, 404}
    assert 204 in codes[2]
    # The process that deleted the run answers for it no more, from the cache or otherwise.
    assert client.post("/predict", json=body).status_code == 404
    assert api.app.state.serving.models.get(run_id) is None


def test_a_failed_run_resumes_and_succeeds(client: httpx.Client, workers: LocalWorkers):
    run = post_run(client, long_spec(epochs=2, max_attempts=1))
    workers.start(faults={run["id"]: {"out_of_memory_at_epoch": 2}})
    failed = wait_for(client, run["id"])
    assert (failed["status"], failed["failure_kind"]) == ("failed", "resources"), failed
    resumed = client.post(f"/runs/{run['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    finished = wait_for(client, run["id"])
    assert finished["status"] == "succeeded", finished
    assert (finished["failure_kind"], finished["error"]) == (None, None)
    # Epoch 1 was kept from the failed attempt's checkpoint; epoch 2 was done again.
    epochs = client.get(f"/runs/{run['id']}/epochs").json()
    assert [(row["epoch"], row["attempt"]) for row in epochs] == [(1, 1), (2, 2)]
