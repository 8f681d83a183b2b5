"""The Ray executor end to end: a real API, a real executor process, a local Ray cluster."""

from typing import Any

import httpx
import pytest

from tests.helpers import D2L_SPEC, assert_epochs_once, long_spec, post_run, wait_for, wait_until
from tests.ray.conftest import RayExecutors

pytestmark = pytest.mark.ray


def test_the_d2l_run_trains_on_ray_and_the_workers_list_shows_the_ray_node(
    client: httpx.Client, ray_executors: RayExecutors
):
    run = post_run(client, D2L_SPEC)
    ray_executors.start()
    finished = wait_for(client, run["id"], timeout=120)
    assert finished["status"] == "succeeded", finished
    assert finished["executor"] == "ray"
    assert_epochs_once(client, run["id"], 3)
    errors = finished["estimation_error"]
    assert max(abs(e) for e in [*errors["w"], errors["b"]]) < 0.01
    nodes = [worker for worker in client.get("/workers").json() if worker["executor"] == "ray"]
    assert len(nodes) == 1 and nodes[0]["id"].startswith("ray/"), nodes
    assert nodes[0]["device"] == "cpu"


def test_cancel_reaches_the_ray_task(client: httpx.Client, ray_executors: RayExecutors):
    run = post_run(client, long_spec(epochs=50))
    ray_executors.start(faults={run["id"]: {"epoch_sleep_seconds": 0.2}})
    wait_until(
        lambda: client.get(f"/runs/{run['id']}").json()["progress"]["epoch"] >= 1,
        timeout=120,
        message="the first epoch on Ray",
    )
    assert client.post(f"/runs/{run['id']}/cancel").status_code == 200
    cancelled = wait_for(client, run["id"], timeout=30)
    assert cancelled["status"] == "cancelled", cancelled
    assert cancelled["executor"] == "ray"
    assert cancelled["progress"]["epoch"] < 50


def test_a_killed_ray_worker_process_resumes_from_the_checkpoint(
    client: httpx.Client, ray_executors: RayExecutors
):
    # The task SIGKILLs its own Ray worker process halfway through epoch 3.
    run = post_run(client, long_spec(epochs=5))
    ray_executors.start(faults={run["id"]: {"kill_at_epoch": 3}})
    finished = wait_for(client, run["id"], timeout=180)
    assert finished["status"] == "succeeded", finished
    assert (finished["attempt"], finished["lost_attempts"]) == (2, 1)
    rows = assert_epochs_once(client, run["id"], 5)
    assert [row["attempt"] for row in rows] == [1, 1, 2, 2, 2]


def test_a_data_parallel_run_trains_with_ray_train(
    client: httpx.Client, ray_executors: RayExecutors
):
    spec: dict[str, Any] = {**D2L_SPEC, "resources": {"workers": 2}}
    run = post_run(client, spec)
    ray_executors.start()
    finished = wait_for(client, run["id"], timeout=180)
    assert finished["status"] == "succeeded", finished
    assert finished["executor"] == "ray"
    assert_epochs_once(client, run["id"], 3)
    errors = finished["estimation_error"]
    assert max(abs(e) for e in [*errors["w"], errors["b"]]) < 0.01
