"""The predict path end to end: zero queries after warm-up, two API processes, CSV, batches."""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import event

from app.config import Settings
from app.database import Database
from app.keys import flows as key_flows
from app.main import create_app
from app.principal import OPEN_ACCESS, Role
from tests.helpers import D2L_SPEC, ApiServer, LocalWorkers, post_run, wait_for

POLLER_THREADS = {"fitserve-key-watcher", "fitserve-registry-watcher", "fitserve-event-poller"}


def _registered(client: httpx.Client, name: str, *true_bs: float) -> list[int]:
    run_ids = []
    for true_b in true_bs:
        spec = {**D2L_SPEC, "dataset": {**D2L_SPEC["dataset"], "true_b": true_b}}
        run = wait_for(client, post_run(client, spec)["id"])
        assert run["status"] == "succeeded", run
        client.post("/models", json={"name": name, "run_id": run["id"]}).raise_for_status()
        run_ids.append(run["id"])
    return run_ids


@contextmanager
def _counting_statements(server: ApiServer) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        # The pollers read on their own threads, on their own clock: not the predict path's.
        if threading.current_thread().name not in POLLER_THREADS:
            statements.append(statement)

    engine = server.app.state.database.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_no_database_io_after_warm_up(
    client: httpx.Client, workers: LocalWorkers, settings: Settings
):
    workers.start()
    (run_id,) = _registered(client, "quiet", 4.2)
    client.put("/models/quiet/aliases/production", json={"version": 1}).raise_for_status()
    database = Database.connect(settings.database_url)
    _row, key = key_flows.create_key(
        database=database, project="default", role=Role.PREDICT, label=None, principal=OPEN_ACCESS
    )
    database.dispose()
    # The watcher polls once at start and then not within this test; auth is on, so every
    # request's key is checked too, from memory.
    quiet = settings.model_copy(
        update={
            "registry_poll_seconds": 60.0,
            "registry_max_staleness_seconds": 120.0,
            "auth": "required",
        }
    )
    bodies = [
        ("/predict", {"run_id": run_id, "inputs": [[1, 1]]}),
        (f"/runs/{run_id}/predict", {"inputs": [[1, 1]]}),
        ("/predict", {"model": "quiet@production", "inputs": [[1, 1]]}),
        ("/models/quiet/predict?alias=production", {"inputs": [[1, 1]]}),
    ]
    headers = {"Authorization": f"Bearer {key}"}
    with (
        ApiServer(create_app(quiet)) as server,
        httpx.Client(base_url=server.url, headers=headers) as http,
    ):
        for path, body in bodies:
            http.post(path, json=body).raise_for_status()
        with _counting_statements(server) as statements:
            for _ in range(50):
                for path, body in bodies:
                    assert http.post(path, json=body).json()["run_id"] == run_id
        assert statements == []
        with _counting_statements(server) as statements:
            assert http.post("/predict", json={"model": "quiet:1", "inputs": [[1, 1]]}).is_success
        assert statements, "a first call for a new reference reads the registry"


def test_a_second_api_process_follows_alias_moves_and_deletions(
    client: httpx.Client, api: ApiServer, workers: LocalWorkers, settings: Settings
):
    workers.start()
    first, second = _registered(client, "shared", 4.2, 10.0)
    client.put("/models/shared/aliases/production", json={"version": 1}).raise_for_status()
    # The other process learns of changes at its watcher's next poll (every 0.1 s); the test
    # makes that poll happen now rather than waiting for it.
    with ApiServer(create_app(settings)) as other, httpx.Client(base_url=other.url) as b:
        poll = other.app.state.registry_watcher.poll

        def by_alias() -> httpx.Response:
            return b.post("/predict", json={"model": "shared@production", "inputs": [[1, 1]]})

        assert by_alias().json()["version"] == 1
        assert b.post(f"/runs/{first}/predict", json={"inputs": [[1, 1]]}).is_success

        client.put("/models/shared/aliases/production", json={"version": 2}).raise_for_status()
        poll()
        moved = by_alias().json()
        assert (moved["version"], moved["run_id"]) == (2, second)

        assert client.delete("/models/shared").status_code == 204
        assert client.delete(f"/runs/{first}").status_code == 204
        poll()
        assert b.post(f"/runs/{first}/predict", json={"inputs": [[1, 1]]}).status_code == 404
        assert by_alias().status_code == 404
        assert other.app.state.serving.models.get(first) is None


def test_csv_in_and_out_and_a_big_batch(client: httpx.Client, workers: LocalWorkers):
    workers.start()
    _registered(client, "csv", 4.2)
    csv_body = "x0,x1\n1,1\n0,0\n"
    answer = client.post(
        "/models/csv/predict", content=csv_body, headers={"content-type": "text/csv"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["x-model"] == "csv" and answer.headers["x-model-version"] == "1"
    lines = answer.text.splitlines()
    assert lines[0] == "prediction" and len(lines) == 3
    assert float(lines[1]) == pytest.approx(2.8, abs=0.05)
    headerless = client.post(
        "/models/csv/predict", content="1,1\n", headers={"content-type": "text/csv"}
    )
    assert headerless.text.splitlines()[1] == lines[1]
    bad = client.post(
        "/models/csv/predict", content="1,1\n1,x\n", headers={"content-type": "text/csv"}
    )
    assert bad.status_code == 422 and "line 2" in bad.json()["detail"][0]["msg"]

    rows = [[i / 1000, 1.0] for i in range(5000)]
    big = client.post("/models/csv/predict", json={"inputs": rows})
    assert big.status_code == 200
    assert len(big.json()["predictions"]) == 5000
    assert big.json()["predictions"][0] == pytest.approx(0.8, abs=0.05)


def test_classification_csv_has_a_probability_column_per_class(
    client: httpx.Client, workers: LocalWorkers
):
    workers.start()
    spec = {
        "dataset": {"type": "synthetic_classification", "n_samples": 300, "n_features": 2},
        "optimizer": {"type": "adam", "lr": 0.05},
        "epochs": 3,
        "batch_size": 32,
    }
    run = wait_for(client, post_run(client, spec)["id"])
    answer = client.post(
        f"/runs/{run['id']}/predict", content="0,0\n1,1\n", headers={"content-type": "text/csv"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-run-id"] == str(run["id"])
    header, *lines = answer.text.splitlines()
    assert header == "prediction,probability_0,probability_1,probability_2"
    label, *probabilities = lines[0].split(",")
    assert label in {"0", "1", "2"}
    assert sum(map(float, probabilities)) == pytest.approx(1.0, abs=1e-5)
    json_answer = client.post(f"/runs/{run['id']}/predict", json={"inputs": [[0, 0]]}).json()
    assert json_answer["classes"] == [0, 1, 2]
    assert str(json_answer["predictions"][0]) == label


def test_warm_answers_match_the_apps_and_errors_still_come_from_the_app(
    client: httpx.Client, workers: LocalWorkers, api: ApiServer
):
    # The first call loads the model through the app; later ones are answered by the
    # ASGI fast path from the cache. Both must say the same, and a bad warm request must
    # still get the app's own error.
    workers.start()
    run = wait_for(client, post_run(client, D2L_SPEC)["id"])
    body = {"run_id": run["id"], "inputs": [[1, 1], [0, 2]]}
    cold = client.post("/predict", json=body)
    assert api.app.state.serving.models.get(run["id"]) is not None
    warm = client.post("/predict", json=body)
    assert cold.status_code == warm.status_code == 200
    assert warm.json() == cold.json()
    assert warm.headers["content-type"] == "application/json"
    by_path = client.post(f"/runs/{run['id']}/predict", json={"inputs": body["inputs"]})
    assert by_path.json() == cold.json()

    wrong = client.post("/predict", json={"run_id": run["id"], "inputs": [[1, 1, 1]]})
    assert wrong.status_code == 422
    assert wrong.json()["detail"][0]["loc"] == ["body", "inputs", 0]
    unknown = client.post("/predict", json={"run_id": run["id"] + 1000, "inputs": [[1, 1]]})
    assert unknown.status_code == 404
    malformed = client.post(
        "/predict", content=b'{"run_id": 1', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422


def test_the_body_limit_holds_on_the_fast_path_too(
    client: httpx.Client, workers: LocalWorkers, settings: Settings
):
    # The limit is below the fast path's inline size, so a warm model's predict of a body
    # between the two would be answered before the app's body limit could refuse it.
    limited = settings.model_copy(update={"max_body_bytes": 1000})
    assert limited.predict_inline_max_bytes > limited.max_body_bytes
    workers.start()
    run = wait_for(client, post_run(client, D2L_SPEC)["id"])
    small = {"run_id": run["id"], "inputs": [[1, 1]]}
    big = json.dumps({"run_id": run["id"], "inputs": [[1.25, -0.5]] * 200}).encode()
    assert 1000 < len(big) < limited.predict_inline_max_bytes
    with ApiServer(create_app(limited)) as server, httpx.Client(base_url=server.url) as http:
        assert http.post("/predict", json=small).status_code == 200
        assert server.app.state.serving.models.get(run["id"]) is not None  # warm now
        assert http.post("/predict", json=small).status_code == 200
        headers = {"content-type": "application/json"}
        for path in ("/predict", f"/runs/{run['id']}/predict"):
            declared = http.post(path, content=big, headers=headers)
            assert declared.status_code == 413, (path, declared.text)

            def chunks(body: bytes = big) -> Iterator[bytes]:
                for start in range(0, len(body), 256):
                    yield body[start : start + 256]

            streamed = http.post(path, content=chunks(), headers=headers)
            assert streamed.status_code == 413, (path, streamed.text)
            assert "limit of 1000 bytes" in streamed.json()["detail"]
