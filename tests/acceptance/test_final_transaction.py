"""A run's last epoch, its checkpoint, its weights and its final status commit together."""

import signal

import httpx

from tests.helpers import LocalWorkers, long_spec, post_run, wait_for, wait_until


def _events(client: httpx.Client, run_id: int) -> list[tuple[str, str]]:
    """The (event, data) pairs of a finished run's stream, which ends after its final status."""
    body = client.get(f"/runs/{run_id}/events").text.replace("\r\n", "\n")
    pairs = []
    for block in body.split("\n\n"):
        fields = {
            key: value.strip()
            for key, _, value in (line.partition(":") for line in block.splitlines())
            if key
        }
        if "event" in fields:
            pairs.append((fields["event"], fields["data"]))
    return pairs


def test_the_last_epoch_is_streamed_before_the_final_status(
    client: httpx.Client, workers: LocalWorkers
):
    workers.start()
    run = wait_for(client, post_run(client, long_spec(epochs=3))["id"])
    assert run["status"] == "succeeded", run
    events = _events(client, run["id"])
    assert [kind for kind, _ in events[-2:]] == ["epoch", "status"]
    assert '"epoch": 3' in events[-2][1] and '"succeeded"' in events[-1][1]
    assert [row["epoch"] for row in client.get(f"/runs/{run['id']}/epochs").json()] == [1, 2, 3]


def test_a_worker_killed_before_the_final_commit_leaves_the_run_to_finish_once(
    client: httpx.Client, workers: LocalWorkers
):
    reference = post_run(client, long_spec(epochs=3))
    killed_run = post_run(client, long_spec(epochs=3))
    first = workers.start(faults={killed_run["id"]: {"kill_before_commit_at_epoch": 3}})
    wait_for(client, reference["id"])
    wait_until(lambda: first.process.exitcode is not None, message="worker killed itself")
    assert first.process.exitcode == -signal.SIGKILL
    # Neither the last epoch nor the weights committed without the other.
    assert [row["epoch"] for row in client.get(f"/runs/{killed_run['id']}/epochs").json()] == [
        1,
        2,
    ]
    assert client.get(f"/runs/{killed_run['id']}").json()["status"] == "running"
    assert client.get(f"/runs/{killed_run['id']}/weights").status_code == 409

    workers.expire(first)
    workers.start()
    run = wait_for(client, killed_run["id"], timeout=60)
    assert run["status"] == "succeeded", run
    rows = client.get(f"/runs/{run['id']}/epochs").json()
    assert [(row["epoch"], row["attempt"]) for row in rows] == [(1, 1), (2, 1), (3, 2)]
    weights = client.get(f"/runs/{run['id']}/weights").json()["sha256"]
    assert weights == client.get(f"/runs/{reference['id']}/weights").json()["sha256"]
