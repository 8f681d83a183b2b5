"""The model registry end to end: register, versions, aliases, predict by name, errors."""

import httpx
import pytest

from tests.helpers import D2L_SPEC, LocalWorkers, post_run, wait_for


def _trained(client: httpx.Client, true_b: float) -> dict:
    spec = {**D2L_SPEC, "dataset": {**D2L_SPEC["dataset"], "true_b": true_b}}
    run = wait_for(client, post_run(client, spec)["id"])
    assert run["status"] == "succeeded", run
    return run


def _predict(client: httpx.Client, name: str, **params) -> httpx.Response:
    return client.post(f"/models/{name}/predict", params=params, json={"inputs": [[1, 1]]})


def test_register_alias_and_predict_by_name(client: httpx.Client, workers: LocalWorkers):
    workers.start()
    first, second = _trained(client, 4.2), _trained(client, 10.0)

    created = client.post("/models", json={"name": "prices", "run_id": first["id"]})
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    assert created.headers["location"] == "/models/prices"
    again = client.post("/models", json={"name": "prices", "run_id": second["id"]}).json()
    assert again["version"] == 2 and again["run_id"] == second["id"]

    moved = client.put("/models/prices/aliases/production", json={"version": 1})
    assert moved.json() == {
        "name": "prices",
        "alias": "production",
        "version": 1,
        "run_id": first["id"],
    }
    model = client.get("/models/prices").json()
    assert model["latest_version"] == 2
    assert model["aliases"] == {"production": 1}
    assert [v["run_id"] for v in model["versions"]] == [first["id"], second["id"]]
    assert model["versions"][0]["aliases"] == ["production"]
    assert model["versions"][0]["task"] == "regression"
    assert "train_loss" in model["versions"][0]["metrics"]
    listed = client.get("/models").json()
    assert [(m["name"], m["latest_version"], m["aliases"]) for m in listed] == [
        ("prices", 2, {"production": 1})
    ]

    by_alias = _predict(client, "prices", alias="production").json()
    assert (by_alias["model"], by_alias["version"], by_alias["run_id"]) == (
        "prices",
        1,
        first["id"],
    )
    assert by_alias["predictions"][0] == pytest.approx(2.8, abs=0.05)
    latest = _predict(client, "prices").json()
    assert latest["version"] == 2
    assert latest["predictions"][0] == pytest.approx(8.6, abs=0.05)
    assert _predict(client, "prices", version=1).json()["version"] == 1
    for reference, version in [("prices@production", 1), ("prices:2", 2), ("prices", 2)]:
        answer = client.post("/predict", json={"model": reference, "inputs": [[1, 1]]}).json()
        assert (answer["model"], answer["version"]) == ("prices", version), reference

    client.put("/models/prices/aliases/production", json={"version": 2})
    assert _predict(client, "prices", alias="production").json()["version"] == 2
    assert client.delete("/models/prices/aliases/production").status_code == 204
    gone = _predict(client, "prices", alias="production")
    assert gone.status_code == 404
    assert "no alias 'production'" in gone.json()["detail"]
    assert client.delete("/models/prices/aliases/production").status_code == 404
    assert _predict(client, "prices", version=3).status_code == 404
    assert client.put("/models/prices/aliases/staging", json={"version": 9}).status_code == 404
    reserved = client.put("/models/prices/aliases/latest", json={"version": 1})
    assert reserved.status_code == 422

    refused = client.delete(f"/runs/{first['id']}")
    assert refused.status_code == 409
    assert "prices:1" in refused.json()["detail"]
    assert client.delete("/models/prices").status_code == 204
    assert client.get("/models/prices").status_code == 404
    assert _predict(client, "prices").status_code == 404
    assert client.delete(f"/runs/{first['id']}").status_code == 204


def test_registry_errors(client: httpx.Client):
    assert client.get("/models/nothing").status_code == 404
    assert _predict(client, "nothing").status_code == 404
    assert client.put("/models/nothing/aliases/prod", json={"version": 1}).status_code == 404
    missing = client.post("/models", json={"name": "m", "run_id": 999999})
    assert missing.status_code == 404
    queued = post_run(client, D2L_SPEC)
    not_done = client.post("/models", json={"name": "m", "run_id": queued["id"]})
    assert not_done.status_code == 409
    assert "only succeeded runs" in not_done.json()["detail"]
    assert client.post("/models", json={"name": "bad name", "run_id": 1}).status_code == 422
    for reference in ["bad name", "m@", "m:0", "m:x", "m@1x", "@prod"]:
        answer = client.post("/predict", json={"model": reference, "inputs": [[1, 1]]})
        assert answer.status_code == 422, reference
        assert answer.json()["detail"][0]["loc"] == ["body", "model"]
    both = client.post("/predict", json={"model": "m", "run_id": 1, "inputs": [[1, 1]]})
    assert both.status_code == 422
    assert "exactly one" in both.json()["detail"][0]["msg"]
    assert _predict(client, "m", version=1, alias="prod").status_code == 422
    assert _predict(client, "m", alias="9lives").status_code == 422
    assert client.get("/models").json() == []
