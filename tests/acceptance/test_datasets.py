"""Datasets through the API: upload, dedupe, list, delete, train on them and predict by name."""

from importlib import resources

import httpx
import pytest

from app.main import create_app
from tests.helpers import ApiServer, LocalWorkers, post_run, wait_for

IRIS = resources.files("app.datasets").joinpath("builtin", "iris.csv").read_bytes()
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


def upload(client: httpx.Client, data: bytes, **fields) -> httpx.Response:
    return client.post("/datasets", files={"file": ("data.csv", data, "text/csv")}, data=fields)


def upload_iris(client: httpx.Client) -> dict:
    response = upload(client, IRIS, target="species")
    assert response.status_code in (200, 201), response.text
    return response.json()


def iris_spec(dataset_id: int, model: dict) -> dict:
    return {
        "dataset": {"type": "dataset", "id": dataset_id, "target": "species"},
        "model": model,
        "optimizer": {"type": "adam", "lr": 0.05},
        "epochs": 60,
        "batch_size": 16,
        "validation_split": 0.2,
        "standardize": True,
    }


def test_iris_upload_train_and_predict_by_column_name(client: httpx.Client, workers: LocalWorkers):
    workers.start()
    response = upload(client, IRIS, target="species")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert response.headers["location"] == f"/datasets/{dataset['id']}"
    assert dataset["n_rows"] == 150
    assert dataset["features"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert dataset["stats"]["species"]["classes"] == [
        ["setosa", 50],
        ["versicolor", 50],
        ["virginica", 50],
    ]
    assert dataset["stats"]["sepal_length"]["min"] == 4.3
    assert dataset["preview"][0] == {**SETOSA, "species": "setosa"}

    again = upload(client, IRIS, target="species")
    assert again.status_code == 200
    assert again.json()["id"] == dataset["id"]

    runs = [
        post_run(client, iris_spec(dataset["id"], model))
        for model in ({"type": "linear"}, {"type": "mlp", "hidden": [16]})
    ]
    for created in runs:
        run = wait_for(client, created["id"])
        assert run["status"] == "succeeded", run
        assert (run["task"], run["spec"]["loss"]) == ("classification", "cross_entropy")
        assert run["metrics"]["val_accuracy"] >= 0.9
        answer = client.post(
            f"/runs/{run['id']}/predict", json={"records": [SETOSA, VIRGINICA]}
        ).json()
        assert answer["predictions"] == ["setosa", "virginica"]
        assert answer["classes"] == ["setosa", "versicolor", "virginica"]

    run_id = runs[0]["id"]
    by_inputs = client.post("/predict", json={"run_id": run_id, "inputs": [list(SETOSA.values())]})
    assert by_inputs.json()["predictions"] == ["setosa"]
    partial = {key: value for key, value in SETOSA.items() if key != "petal_width"}
    missing = client.post(f"/runs/{run_id}/predict", json={"records": [partial]})
    assert missing.status_code == 422
    assert "records[0] lacks column 'petal_width'" in missing.json()["detail"][0]["msg"]
    assert missing.json()["detail"][0]["loc"] == ["body", "records", 0]
    # A CSV header maps the columns by name, in any order.
    names = list(reversed(SETOSA))
    rows = [[str(record[name]) for name in names] for record in (SETOSA, VIRGINICA)]
    csv_body = "\n".join([",".join(names), *(",".join(row) for row in rows)]) + "\n"
    as_csv = client.post(
        f"/runs/{run_id}/predict", content=csv_body, headers={"content-type": "text/csv"}
    )
    assert as_csv.status_code == 200, as_csv.text
    assert [line.split(",")[0] for line in as_csv.text.splitlines()[1:]] == ["setosa", "virginica"]
    extra = client.post(f"/runs/{run_id}/predict", json={"records": [{**SETOSA, "colour": 1}]})
    assert extra.status_code == 422
    assert "has column 'colour', which is no feature" in extra.json()["detail"][0]["msg"]
    both = client.post(
        f"/runs/{run_id}/predict", json={"inputs": [[1, 2, 3, 4]], "records": [SETOSA]}
    )
    assert both.status_code == 422

    in_use = client.delete(f"/datasets/{dataset['id']}")
    assert in_use.status_code == 409
    assert f"used by 2 run(s) ({run_id}, " in in_use.json()["detail"]
    assert client.delete(f"/datasets/{dataset['id']}", params={"force": "true"}).status_code == 204
    assert client.get(f"/datasets/{dataset['id']}").status_code == 404

    # A run that was accepted before the dataset went fails as invalid input. No worker
    # runs while it is queued, so it cannot start before the dataset is gone.
    workers.stop_all()
    orphan = post_run(client, {**iris_spec(upload_iris(client)["id"], {"type": "linear"})})
    client.delete(f"/datasets/{orphan['spec']['dataset']['id']}", params={"force": "true"})
    workers.start()
    failed = wait_for(client, orphan["id"])
    assert failed["status"] == "failed"
    assert failed["failure_kind"] == "invalid_input"
    assert "no longer exists" in failed["error"]


def test_regression_on_a_builtin_dataset(client: httpx.Client, workers: LocalWorkers):
    workers.start()
    listed = client.get("/datasets", params={"builtin": "true"}).json()["items"]
    assert {item["name"] for item in listed} == {"iris", "friedman1", "diabetes"}
    stored = client.post("/datasets/builtin/friedman1")
    assert stored.status_code == 201
    assert client.post("/datasets/builtin/friedman1").json()["id"] == stored.json()["id"]
    assert client.post("/datasets/builtin/nope").status_code == 404
    spec = {
        "dataset": {"type": "dataset", "id": stored.json()["id"], "target": "y"},
        "model": {"type": "mlp", "hidden": [32]},
        "optimizer": {"type": "adam", "lr": 0.01},
        "epochs": 40,
        "batch_size": 16,
        "validation_split": 0.2,
        "standardize": True,
    }
    run = wait_for(client, post_run(client, spec)["id"])
    assert run["status"] == "succeeded", run
    assert run["metrics"]["val_r2"] > 0.5
    record = {"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5, "x5": 0.5}
    answer = client.post(f"/runs/{run['id']}/predict", json={"records": [record]}).json()
    assert len(answer["predictions"]) == 1


def test_json_upload_as_records_and_as_columns(client: httpx.Client):
    records = [{"x": float(i), "z": float(i % 3), "label": "ab"[i % 2]} for i in range(10)]
    response = client.post(
        "/datasets", json={"name": "tiny", "target": "label", "records": records}
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "tiny"
    assert response.json()["format"] == "json"
    columns = {"x": [1, 2, None, 4], "y": [1.0, 2.0, 3.0, 4.0]}
    response = client.post("/datasets", json={"target": "y", "missing": "mean", "columns": columns})
    assert response.status_code == 201, response.text
    assert response.json()["preview"][2] == {"x": pytest.approx(7 / 3), "y": 3.0}
    assert response.json()["missing"] == "mean"
    assert response.json()["task"] == "regression"

    bad = client.post("/datasets", json={"target": "y", "records": [{"x": "a", "y": 1}]})
    assert bad.status_code == 422
    assert "column 'x', row 1: 'a' is not a number" in bad.json()["detail"][0]["msg"]
    # Each error names the place the client wrote, in the shape it sent.
    assert bad.json()["detail"][0]["loc"] == ["body", "records", 0, "x"]
    mixed = client.post(
        "/datasets", json={"target": "y", "records": [{"x": 1, "y": 1}, {"x": 2, "y": "b"}]}
    )
    assert mixed.json()["detail"][0]["loc"] == ["body", "records", 0, "y"]
    bad_column = client.post(
        "/datasets", json={"target": "y", "columns": {"x": [1, "a"], "y": [1, 2]}}
    )
    assert bad_column.json()["detail"][0]["loc"] == ["body", "columns", "x"]
    assert bad_column.json()["detail"][0]["type"] == "invalid_dataset"
    neither = client.post("/datasets", json={"target": "y"})
    assert neither.status_code == 422
    assert "exactly one of records or columns" in neither.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("data", "fields", "fragment"),
    [
        (b"", {}, "the file is empty"),
        (b"a,b,y\n", {}, "header but no rows"),
        (b"a,a,y\n1,2,3\n", {}, "duplicate column name 'a'"),
        (b"a,b,y\n1,2,3\n", {"target": "nope"}, "unknown target column 'nope'"),
        (b"a,b,y\n1,2,k\n3,4,k\n", {}, "single class 'k'"),
        (b"a,b,y\n1,2,3\n4,5\n", {}, "row 2 has 2 values but the header has 3 columns"),
        (b"a,b,y\n1,2,3\n4,five,6\n", {}, "column 'b', row 2: 'five' is not a number"),
        (b"a,b,y\n1,2,3\n4,,6\n", {}, "column 'b' is missing a value at row 2"),
        (b"a,b,y\n1,2,3\n", {"missing": "sometimes"}, "Input should be"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    client: httpx.Client, data: bytes, fields: dict, fragment: str
):
    response = upload(client, data, **{"target": "y", **fields})
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"][0]["msg"]
    assert client.get("/datasets").json()["items"] == []


def test_missing_value_policies_are_recorded(client: httpx.Client):
    data = b"a,b,y\n1,,0\n2,4,1\n3,8,0\n"
    dropped = upload(client, data, target="y", missing="drop").json()
    filled = upload(client, data, target="y", missing="mean").json()
    assert dropped["id"] != filled["id"]
    assert (dropped["missing"], dropped["n_rows"]) == ("drop", 2)
    assert (filled["missing"], filled["n_rows"]) == ("mean", 3)
    assert filled["preview"][0]["b"] == 6.0
    assert filled["stats"]["b"]["missing"] == 1
    only_b = upload(
        client, data, target="y", features="b", task="classification", missing="drop"
    ).json()
    assert only_b["features"] == ["b"]
    assert only_b["stats"]["y"]["classes"] == [[0, 1], [1, 1]]


def test_list_is_paginated_newest_first(client: httpx.Client):
    ids = [
        upload(client, b"a,y\n%d,1\n2,2\n" % i, target="y", name=f"d{i}").json()["id"]
        for i in range(5)
    ]
    first = client.get("/datasets", params={"limit": 2}).json()
    assert [item["id"] for item in first["items"]] == ids[:-3:-1]
    second = client.get("/datasets", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [item["id"] for item in second["items"]] == ids[-3:-5:-1]
    last = client.get("/datasets", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert [item["id"] for item in last["items"]] == [ids[0]]
    assert last["next_cursor"] is None
    assert first["items"][0]["name"] == "d4"
    assert "preview" not in first["items"][0]
    assert client.get(f"/datasets/{ids[0]}").json()["preview"] == [
        {"a": 0.0, "y": 1},
        {"a": 2.0, "y": 2},
    ]


def test_runs_check_the_dataset_reference(client: httpx.Client):
    dataset = upload_iris(client)
    spec = iris_spec(dataset["id"], {"type": "linear"})
    cases = [
        ({"id": 987654}, ["dataset", "id"], "dataset 987654 does not exist"),
        ({"target": "sepal_length"}, ["dataset", "target"], "has target 'species'"),
        (
            {"features": ["petal_width", "beak"]},
            ["dataset", "features", 1],
            "no feature column 'beak'",
        ),
    ]
    for change, loc, fragment in cases:
        response = client.post("/runs", json={**spec, "dataset": {**spec["dataset"], **change}})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", *loc]
        assert fragment in response.json()["detail"][0]["msg"]
    wrong_task = client.post("/runs", json={**spec, "task": "regression"})
    assert wrong_task.status_code == 422
    assert "is for classification, not regression" in wrong_task.json()["detail"][0]["msg"]
    subset = {**spec, "dataset": {**spec["dataset"], "features": ["petal_width"]}}
    assert client.post("/runs", json=subset).status_code == 201
    assert client.get("/datasets/987654").status_code == 404
    assert client.delete("/datasets/987654").status_code == 404


def test_upload_size_limit_holds_with_and_without_content_length(settings):
    # The dataset limit replaces the general body limit on /datasets, in both directions.
    app = create_app(
        settings.model_copy(update={"max_body_bytes": 1000, "max_dataset_bytes": 4000})
    )
    small = b"a,y\n" + b"1,2\n" * 300
    big = b"a,y\n" + b"1,2\n" * 2000
    with ApiServer(app) as server, httpx.Client(base_url=server.url) as http:
        assert upload(http, small, target="y").status_code == 201
        declared = upload(http, big, target="y")
        assert declared.status_code == 413

        body, headers = _multipart(big)

        def chunks():
            for start in range(0, len(body), 512):
                yield body[start : start + 512]

        streamed = http.post("/datasets", content=chunks(), headers=headers)
        assert streamed.status_code == 413
        assert "limit of 4000 bytes" in streamed.json()["detail"]
        assert len(http.get("/datasets").json()["items"]) == 1
        json_body = {"target": "y", "columns": {"a": [1.0] * 300, "y": [2.0] * 300}}
        assert http.post("/datasets", json=json_body).status_code == 413


def _multipart(data: bytes) -> tuple[bytes, dict[str, str]]:
    request = httpx.Request(
        "POST", "http://x/", files={"file": ("big.csv", data)}, data={"target": "y"}
    )
    return request.read(), {"content-type": request.headers["content-type"]}
