"""Data-parallel runs on the local executor: one run, two processes, gloo."""

from typing import Any

import httpx

from tests.helpers import (
    D2L_SPEC,
    LocalWorkers,
    assert_epochs_once,
    long_spec,
    post_run,
    wait_for,
)


def test_the_d2l_run_on_two_processes_matches_one_process(
    client: httpx.Client, workers: LocalWorkers
):
    parallel = post_run(client, {**D2L_SPEC, "resources": {"workers": 2}})
    single = post_run(client, D2L_SPEC)
    workers.start()
    runs = [wait_for(client, run["id"], timeout=90) for run in (parallel, single)]
    assert [run["status"] for run in runs] == ["succeeded", "succeeded"], runs
    assert runs[0]["spec"]["resources"] == {"workers": 2}
    assert runs[0]["executor"] == "local"
    assert_epochs_once(client, parallel["id"], 3)
    errors = runs[0]["estimation_error"]
    assert max(abs(e) for e in [*errors["w"], errors["b"]]) < 0.01
    # The two replicas average the same batch's gradient a single process computes.
    learned: list[Any] = [
        [*run["estimation_error"]["learned_w"], run["estimation_error"]["learned_b"]]
        for run in runs
    ]
    assert all(abs(a - b) < 1e-4 for a, b in zip(*learned, strict=True)), learned


def test_a_killed_data_parallel_run_resumes_from_its_checkpoint(
    client: httpx.Client, workers: LocalWorkers
):
    # Rank 0 (the worker) is killed halfway through epoch 2; its follower goes with it.
    dataset = {"type": "synthetic_classification", "n_samples": 800, "n_features": 8}
    run = post_run(client, long_spec(epochs=3, dataset=dataset, resources={"workers": 2}))
    first = workers.start(faults={run["id"]: {"kill_at_epoch": 2}})
    first.process.join(90)
    assert first.process.exitcode == -9
    workers.expire(first)
    workers.start()
    finished = wait_for(client, run["id"], timeout=120)
    assert finished["status"] == "succeeded", finished
    assert (finished["attempt"], finished["lost_attempts"]) == (2, 1)
    rows = assert_epochs_once(client, run["id"], 3)
    assert [row["attempt"] for row in rows] == [1, 2, 2]
