"""Run names and tags, search, sorting by a final metric, and comparing runs."""

import httpx

from tests.helpers import D2L_SPEC, LocalWorkers, post_run, wait_for


def named(name: str, tags: list[str], lr: float = 0.03) -> dict:
    """The d2l run with a name, tags and a learning rate."""
    return {**D2L_SPEC, "name": name, "tags": tags, "optimizer": {"type": "sgd", "lr": lr}}


def ids(response: httpx.Response) -> list[int]:
    """The run ids of a listing, asserting it succeeded."""
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_names_and_tags_filter_the_listing(client: httpx.Client) -> None:
    slow = post_run(client, named("Baseline SGD", ["d2l", "sgd"]))
    fast = post_run(client, named("fast sgd 100%", ["d2l", "sgd", "fast"], lr=0.1))
    other = post_run(client, named("other", ["mlp"]))

    assert (slow["name"], slow["tags"]) == ("Baseline SGD", ["d2l", "sgd"])
    assert ids(client.get("/runs", params={"name": "sgd"})) == [fast["id"], slow["id"]]
    # % and _ are matched as themselves, not as wildcards.
    assert ids(client.get("/runs", params={"name": "100%"})) == [fast["id"]]
    assert ids(client.get("/runs", params={"name": "e_s"})) == []
    assert ids(client.get("/runs", params={"tag": "d2l"})) == [fast["id"], slow["id"]]
    assert ids(client.get("/runs", params=[("tag", "sgd"), ("tag", "fast")])) == [fast["id"]]
    assert ids(client.get("/runs", params={"tag": "mlp"})) == [other["id"]]
    assert ids(client.get("/runs", params={"sort": "name"})) == [
        slow["id"],
        fast["id"],
        other["id"],
    ]


def test_bad_names_tags_and_sorts_name_the_field(client: httpx.Client) -> None:
    repeated = client.post("/runs", json=named("x", ["a", "b", "a"]))
    assert repeated.status_code == 422
    assert repeated.json()["detail"][0]["loc"] == ["body", "tags"]
    assert "repeated: a" in repeated.json()["detail"][0]["msg"]
    spaced = client.post("/runs", json=named("x", ["has space"]))
    assert spaced.status_code == 422
    assert spaced.json()["detail"][0]["loc"] == ["body", "tags", 0]
    sort = client.get("/runs", params={"sort": "metrics.; drop table runs"})
    assert sort.status_code == 422
    assert sort.json()["detail"][0]["loc"] == ["query", "sort"]
    assert client.get("/runs", params={"tag": "x" * 65}).status_code == 422


def test_sort_by_a_final_metric_and_compare(client: httpx.Client, workers: LocalWorkers) -> None:
    workers.start()
    runs = [post_run(client, named(f"lr {lr}", ["sweep"], lr=lr)) for lr in (0.003, 0.03, 0.01)]
    finished = [wait_for(client, run["id"]) for run in runs]
    assert {run["status"] for run in finished} == {"succeeded"}
    by_loss = sorted(finished, key=lambda run: run["metrics"]["train_loss"])
    unfinished = post_run(client, named("queued", ["sweep"]))
    client.post(f"/runs/{unfinished['id']}/cancel").raise_for_status()

    ascending = ids(client.get("/runs", params={"sort": "metrics.train_loss"}))
    assert ascending == [run["id"] for run in by_loss] + [unfinished["id"]]
    descending = ids(client.get("/runs", params={"sort": "-metrics.train_loss", "limit": 2}))
    assert descending == [by_loss[2]["id"], by_loss[1]["id"]]
    page = client.get("/runs", params={"sort": "-metrics.train_loss", "limit": 2}).json()
    rest = ids(
        client.get(
            "/runs",
            params={"sort": "-metrics.train_loss", "limit": 2, "cursor": page["next_cursor"]},
        )
    )
    assert rest == [by_loss[0]["id"], unfinished["id"]]

    first, second = finished[0]["id"], finished[1]["id"]
    comparison = client.get("/runs/compare", params={"ids": f"{second},{first}"})
    assert comparison.status_code == 200, comparison.text
    body = comparison.json()
    assert [run["id"] for run in body["runs"]] == [second, first]
    assert body["spec_differences"] == {
        "name": ["lr 0.03", "lr 0.003"],
        "optimizer.lr": [0.03, 0.003],
    }
    assert body["metrics"]["train_loss"] == [
        finished[1]["metrics"]["train_loss"],
        finished[0]["metrics"]["train_loss"],
    ]


def test_compare_refuses_bad_id_lists(client: httpx.Client) -> None:
    run = post_run(client, D2L_SPEC)
    for bad in (str(run["id"]), f"{run['id']},{run['id']}", "1,2,3,4,5,6", "a,b"):
        answer = client.get("/runs/compare", params={"ids": bad})
        assert answer.status_code == 422, bad
        assert answer.json()["detail"][0]["loc"] == ["query", "ids"]
    missing = client.get("/runs/compare", params={"ids": f"{run['id']},999999"})
    assert missing.status_code == 404
