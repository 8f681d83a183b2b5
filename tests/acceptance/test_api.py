"""The API end to end: real database, real worker process, requests over httpx."""

import json
import re

import httpx
import pytest
from safetensors.torch import load as load_safetensors

from app.main import create_app
from tests.helpers import D2L_SPEC, ApiServer, LocalWorkers, post_run, wait_for


@pytest.fixture
def worker(workers: LocalWorkers) -> LocalWorkers:
    workers.start()
    return workers


def test_d2l_linear_regression_through_the_api(client: httpx.Client, worker: LocalWorkers):
    response = client.post("/runs", json=D2L_SPEC)
    assert response.status_code == 201
    created = response.json()
    assert created["status"] == "queued"
    assert response.headers["location"] == f"/runs/{created['id']}"

    run = wait_for(client, created["id"], timeout=30)
    assert run["status"] == "succeeded", run
    assert run["device"] == "cpu"
    assert run["progress"] == {"epoch": 3, "epochs": 3}
    assert run["started_at"] >= run["created_at"]

    epochs = client.get(f"/runs/{run['id']}/epochs").json()
    assert [row["epoch"] for row in epochs] == [1, 2, 3]
    losses = [row["train_loss"] for row in epochs]
    assert losses[0] > losses[1] > losses[2]
    assert {"train_rmse", "train_r2"} <= set(epochs[-1]["metrics"])

    error = run["estimation_error"]
    assert all(abs(value) < 0.01 for value in error["w"])
    assert abs(error["b"]) < 0.01

    prediction = client.post("/predict", json={"run_id": run["id"], "inputs": [[1, 1]]}).json()
    assert prediction["predictions"][0] == pytest.approx(2.8, abs=0.02)
    by_path = client.post(f"/runs/{run['id']}/predict", json={"inputs": [[1, 1]]}).json()
    assert by_path["predictions"] == prediction["predictions"]


def test_weights_as_json_and_as_safetensors(client: httpx.Client, worker: LocalWorkers):
    run = wait_for(client, post_run(client, D2L_SPEC)["id"])
    as_json = client.get(f"/runs/{run['id']}/weights").json()
    assert as_json["tensors"]["net.0.weight"]["shape"] == [1, 2]
    assert as_json["tensors"]["net.0.bias"]["shape"] == [1]

    download = client.get(f"/runs/{run['id']}/weights", params={"format": "safetensors"})
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["x-weights-sha256"] == as_json["sha256"]
    tensors = load_safetensors(download.content)
    assert tensors["net.0.weight"].tolist() == as_json["tensors"]["net.0.weight"]["values"]


@pytest.mark.parametrize("model", [{"type": "linear"}, {"type": "mlp", "hidden": [32]}])
def test_classification_predicts_labels_and_probabilities(
    client: httpx.Client, worker: LocalWorkers, model: dict
):
    spec = {
        "dataset": {"type": "synthetic_classification", "n_samples": 600, "n_features": 4},
        "model": model,
        "optimizer": {"type": "adam", "lr": 0.05},
        "epochs": 15,
        "batch_size": 32,
        "validation_split": 0.2,
    }
    run = wait_for(client, post_run(client, spec)["id"])
    assert run["status"] == "succeeded", run
    assert run["task"] == "classification"
    assert run["metrics"]["val_accuracy"] > 0.9
    answer = client.post(f"/runs/{run['id']}/predict", json={"inputs": [[0, 0, 0, 0]] * 2}).json()
    assert answer["classes"] == [0, 1, 2]
    assert answer["predictions"][0] in (0, 1, 2)
    assert sum(answer["probabilities"][0]) == pytest.approx(1.0, abs=1e-5)


def test_inline_string_labels_come_back_as_strings(client: httpx.Client, worker: LocalWorkers):
    features = [[float(i % 2), float(i % 2) * 2.0] for i in range(40)]
    targets = ["cat" if i % 2 else "dog" for i in range(40)]
    spec = {
        "dataset": {"type": "inline", "features": features, "targets": targets},
        "loss": "cross_entropy",
        "optimizer": {"type": "adam", "lr": 0.1},
        "epochs": 30,
        "batch_size": 8,
        "standardize": True,
    }
    run = wait_for(client, post_run(client, spec)["id"])
    assert run["status"] == "succeeded", run
    answer = client.post("/predict", json={"run_id": run["id"], "inputs": [[1, 2], [0, 0]]})
    assert answer.json()["predictions"] == ["cat", "dog"]
    assert answer.json()["classes"] == ["cat", "dog"]


def test_predict_errors(client: httpx.Client, worker: LocalWorkers):
    assert client.post("/predict", json={"run_id": 999999, "inputs": [[1, 1]]}).status_code == 404
    queued = post_run(client, {**D2L_SPEC, "device": "cuda"})
    no_weights = client.post("/predict", json={"run_id": queued["id"], "inputs": [[1, 1]]})
    assert no_weights.status_code == 409
    assert "no weights" in no_weights.json()["detail"]

    run = wait_for(client, post_run(client, D2L_SPEC)["id"])
    wrong = client.post("/predict", json={"run_id": run["id"], "inputs": [[1, 1], [1, 2, 3]]})
    assert wrong.status_code == 422
    assert "row 1 has 3 values" in wrong.json()["detail"][0]["msg"]
    nan = client.post(
        "/predict",
        content=b'{"run_id": %d, "inputs": [[NaN, 1]]}' % run["id"],
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422


def test_cuda_request_without_a_gpu_fails_at_once(client: httpx.Client, worker: LocalWorkers):
    run = wait_for(client, post_run(client, {**D2L_SPEC, "device": "cuda"})["id"], timeout=15)
    assert run["status"] == "failed"
    assert run["failure_kind"] == "invalid_input"
    assert "cuda" in run["error"] and "cpu" in run["error"]


def test_list_runs_is_paginated_newest_first_and_filters_by_status(client: httpx.Client):
    ids = [post_run(client, D2L_SPEC)["id"] for _ in range(5)]
    client.post(f"/runs/{ids[0]}/cancel")
    first = client.get("/runs", params={"limit": 2}).json()
    assert [run["id"] for run in first["items"]] == ids[::-1][:2]
    second = client.get("/runs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [run["id"] for run in second["items"]] == ids[::-1][2:4]
    last = client.get("/runs", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert [run["id"] for run in last["items"]] == [ids[0]]
    assert last["next_cursor"] is None
    cancelled = client.get("/runs", params={"status": "cancelled"}).json()
    assert [run["id"] for run in cancelled["items"]] == [ids[0]]


def test_listing_leaves_inline_rows_out_and_the_run_keeps_them(client: httpx.Client):
    features = [[float(i), float(i) * 2] for i in range(50)]
    dataset = {"type": "inline", "features": features, "targets": [float(i) for i in range(50)]}
    run = post_run(client, {**D2L_SPEC, "dataset": dataset})
    listed = client.get("/runs").json()["items"][0]
    assert listed["spec"]["dataset"]["n_rows"] == 50
    assert listed["spec"]["dataset"]["n_features"] == 2
    assert "features" not in listed["spec"]["dataset"]
    assert client.get(f"/runs/{run['id']}").json()["spec"]["dataset"]["features"] == features


def test_cancel_and_delete_a_queued_run(client: httpx.Client):
    run = post_run(client, D2L_SPEC)
    cancelled = client.post(f"/runs/{run['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert client.post(f"/runs/{run['id']}/cancel").status_code == 200
    assert client.delete(f"/runs/{run['id']}").status_code == 204
    assert client.get(f"/runs/{run['id']}").status_code == 404
    assert client.delete(f"/runs/{run['id']}").status_code == 404


def test_idempotency_key_returns_the_same_run(client: httpx.Client):
    first = client.post("/runs", json=D2L_SPEC, headers={"Idempotency-Key": "abc-1"})
    again = client.post("/runs", json=D2L_SPEC, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = client.post(
        "/runs", json={**D2L_SPEC, "epochs": 4}, headers={"Idempotency-Key": "abc-1"}
    )
    assert other.status_code == 409
    assert len(client.get("/runs").json()["items"]) == 1


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"epochs": 10**6}, "epochs", "at most"),
        ({"lr": 0.1}, None, "Extra inputs are not permitted"),
        ({"loss": "cross_entropy"}, None, "is for regression"),
        ({"model": {"type": "mlp", "hidden": [100_000]}}, "hidden", "over the limit"),
        ({"dataset": {"type": "synthetic_linear", "n_samples": 10**8}}, "n_samples", "rows"),
        ({"device": "tpu"}, "device", "pattern"),
        ({"chaos": {"kill_at_epoch": 1}}, None, "Extra inputs are not permitted"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(
    client: httpx.Client, change: dict, field: str | None, fragment: str | None, settings
):
    response = client.post("/runs", json={**D2L_SPEC, **change})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert fragment in detail["msg"]
    if field is not None:
        assert field in detail["loc"]


def test_inline_dataset_errors_name_the_row(client: httpx.Client):
    ragged = {"type": "inline", "features": [[1, 2], [3]], "targets": [1, 2]}
    response = client.post("/runs", json={**D2L_SPEC, "dataset": ragged})
    assert response.status_code == 422
    assert "row 1 has 1 values" in response.json()["detail"][0]["msg"]

    short = {"type": "inline", "features": [[1, 2], [3, 4]], "targets": [1]}
    response = client.post("/runs", json={**D2L_SPEC, "dataset": short})
    assert "targets has 1 values" in response.json()["detail"][0]["msg"]

    text_target = {"type": "inline", "features": [[1, 2], [3, 4]], "targets": [1, "x"]}
    response = client.post("/runs", json={**D2L_SPEC, "dataset": text_target})
    assert "targets[1]" in response.json()["detail"][0]["msg"]

    one_class = {"type": "inline", "features": [[1, 2], [3, 4]], "targets": ["a", "a"]}
    response = client.post(
        "/runs", json={**D2L_SPEC, "loss": "cross_entropy", "dataset": one_class}
    )
    assert response.status_code == 422
    assert "at least 2 distinct labels" in response.json()["detail"][0]["msg"]

    body = json.dumps({**D2L_SPEC, "dataset": {**ragged, "features": [[1, 2], [3, 4]]}})
    nan_body = body.replace("[3, 4]", "[3, NaN]").encode()
    response = client.post("/runs", content=nan_body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:3] == ["body", "dataset", "inline"]


def test_body_size_limit_holds_with_and_without_content_length(settings):
    app = create_app(settings.model_copy(update={"max_body_bytes": 1000}))
    big = json.dumps({**D2L_SPEC, "padding": "x" * 5000}).encode()
    with ApiServer(app) as server, httpx.Client(base_url=server.url) as small_client:
        declared = small_client.post(
            "/runs", content=big, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413

        def chunks():
            for start in range(0, len(big), 512):
                yield big[start : start + 512]

        streamed = small_client.post(
            "/runs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert "limit of 1000 bytes" in streamed.json()["detail"]
        assert small_client.get("/runs").json()["items"] == []


def test_not_found_and_conflicts(client: httpx.Client):
    assert client.get("/runs/424242").status_code == 404
    assert client.get("/runs/424242/epochs").status_code == 404
    run = post_run(client, D2L_SPEC)
    assert client.get(f"/runs/{run['id']}/weights").status_code == 409
    assert client.post(f"/runs/{run['id']}/resume").status_code == 409


def test_health_workers_and_docs(client: httpx.Client, worker: LocalWorkers):
    assert client.get("/healthz").json()["status"] == "ok"
    run = wait_for(client, post_run(client, D2L_SPEC)["id"])
    assert run["status"] == "succeeded"
    listed = client.get("/workers").json()
    assert [item["id"] for item in listed] == [worker.handles[0].worker_id]
    assert listed[0]["device"] == "cpu"
    assert listed[0]["pid"] == worker.handles[0].process.pid
    openapi = client.get("/openapi.json")
    schema = openapi.json()
    assert "/runs" in schema["paths"] and "/predict" in schema["paths"]
    # Fault injection is a worker hook for tests, not part of the API.
    assert re.search(r"\bchaos|\bfault", openapi.text, re.IGNORECASE) is None
    assert "SyntheticLinearDataset" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_ids_past_32_bits_are_refused_as_invalid_not_crashed_on(client: httpx.Client):
    huge = 2**31
    for method, path, body in [
        ("GET", f"/runs/{huge}", None),
        ("GET", f"/runs?cursor={huge}", None),
        ("POST", f"/runs/{huge}/predict", {"inputs": [[1, 1]]}),
        ("POST", "/predict", {"run_id": huge, "inputs": [[1, 1]]}),
        ("POST", "/models", {"name": "m", "run_id": huge}),
        ("GET", f"/datasets/{huge}", None),
    ]:
        answer = client.request(method, path, json=body)
        assert answer.status_code == 422, (method, path, answer.text)
