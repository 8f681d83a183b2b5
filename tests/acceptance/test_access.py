"""Keys, roles, projects, quotas and the audit log, end to end over HTTP with auth required."""

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.helpers import (
    D2L_SPEC,
    ApiProcess,
    ApiServer,
    LocalWorkers,
    storage_env,
    wait_for,
    wait_until,
)

COLUMNS = {"x": [1.0, 2.0, 3.0, 4.0], "y": [2.0, 4.0, 6.0, 8.1]}


_opened: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _client(server: ApiServer | ApiProcess, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = httpx.Client(base_url=server.url, headers=headers, timeout=30)
    _opened.append(client)
    return client


def _trained_run(client: httpx.Client) -> dict:
    created = client.post("/runs", json=D2L_SPEC)
    assert created.status_code == 201, created.text
    run = wait_for(client, created.json()["id"])
    assert run["status"] == "succeeded", run
    return run


def test_roles_decide_what_a_key_may_do(secured, make_key, workers: LocalWorkers):
    workers.start()
    anonymous = _client(secured)
    refused = anonymous.get("/runs")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer KEY" in refused.json()["detail"]
    assert anonymous.post("/predict", json={"run_id": 1, "inputs": [[1, 1]]}).status_code == 401
    assert _client(secured, "fsk_nonsense").get("/runs").status_code == 401
    health = anonymous.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})

    predictor = _client(secured, make_key("team", "predict"))
    trainer = _client(secured, make_key("team", "train"))
    admin = _client(secured, make_key("team", "admin"))

    forbidden = predictor.post("/runs", json=D2L_SPEC)
    assert forbidden.status_code == 403
    assert forbidden.json()["detail"] == "this needs the train role; the key has predict"
    assert predictor.get("/models").status_code == 200
    run = _trained_run(trainer)
    for path in ("/workers", "/keys", "/audit", "/projects"):
        assert trainer.get(path).status_code == 403, path
        assert admin.get(path).status_code == 200, path
    # The first call loads the model through the app; the second is the cached fast path.
    for _ in range(2):
        answer = predictor.post(f"/runs/{run['id']}/predict", json={"inputs": [[1, 1]]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0] == pytest.approx(2.8, abs=0.05)


def test_another_projects_objects_are_not_found_and_listings_are_scoped(
    secured, make_key, workers: LocalWorkers
):
    workers.start()
    owner = _client(secured, make_key("owner", "train"))
    other = _client(secured, make_key("other", "train"))
    run = _trained_run(owner)
    run_id = run["id"]
    dataset = owner.post("/datasets", json={"columns": COLUMNS, "target": "y"})
    assert dataset.status_code == 201, dataset.text
    dataset_id = dataset.json()["id"]
    assert owner.post("/models", json={"name": "m", "run_id": run_id}).status_code == 201
    assert owner.put("/models/m/aliases/prod", json={"version": 1}).status_code == 200
    # Warm the owner's caches, so the other project is refused by the fast path too.
    assert owner.post(f"/runs/{run_id}/predict", json={"inputs": [[1, 1]]}).status_code == 200
    assert owner.post("/predict", json={"model": "m@prod", "inputs": [[1, 1]]}).status_code == 200

    # Comparing one's own run with another project's is a 404 too.
    other_run_id = _trained_run(other)["id"]
    rows = {"inputs": [[1, 1]]}
    attempts = [
        ("GET", f"/runs/{run_id}", None),
        ("GET", f"/runs/{run_id}/epochs", None),
        ("GET", f"/runs/{run_id}/weights", None),
        ("GET", f"/runs/{run_id}/events", None),
        ("GET", f"/runs/compare?ids={run_id},{other_run_id}", None),
        ("POST", f"/runs/{run_id}/cancel", None),
        ("POST", f"/runs/{run_id}/resume", None),
        ("DELETE", f"/runs/{run_id}", None),
        ("POST", f"/runs/{run_id}/predict", rows),
        ("POST", "/predict", {"run_id": run_id, **rows}),
        ("POST", "/predict", {"model": "m@prod", **rows}),
        ("GET", f"/datasets/{dataset_id}", None),
        ("DELETE", f"/datasets/{dataset_id}", None),
        ("GET", "/models/m", None),
        ("POST", "/models/m/predict", rows),
        ("PUT", "/models/m/aliases/prod", {"version": 1}),
        ("DELETE", "/models/m/aliases/prod", None),
        ("DELETE", "/models/m", None),
        ("POST", "/models", {"name": "stolen", "run_id": run_id}),
    ]
    for method, path, body in attempts:
        answer = other.request(method, path, json=body)
        assert answer.status_code == 404, (method, path, answer.text)
    borrowed = other.post(
        "/runs", json={**D2L_SPEC, "dataset": {"type": "dataset", "id": dataset_id, "target": "y"}}
    )
    assert borrowed.status_code == 422
    assert borrowed.json()["detail"][0]["msg"] == f"dataset {dataset_id} does not exist"

    assert [item["id"] for item in other.get("/runs").json()["items"]] == [other_run_id]
    assert other.get("/datasets").json()["items"] == []
    for path in ("/runs", "/datasets"):
        assert [item["id"] for item in owner.get(path).json()["items"]] == [
            run_id if path == "/runs" else dataset_id
        ]
    assert other.get("/models").json() == []
    # Names are per project: the other project may have its own `m`.
    other_run = other.get(f"/runs/{other_run_id}").json()
    assert other.post("/models", json={"name": "m", "run_id": other_run["id"]}).status_code == 201
    mine = owner.post("/models/m/predict", params={"alias": "prod"}, json=rows).json()
    theirs = other.post("/models/m/predict", json=rows).json()
    assert (mine["run_id"], theirs["run_id"]) == (run_id, other_run["id"])
    assert owner.get(f"/runs/{run_id}").json()["status"] == "succeeded"


def test_a_revoked_key_stops_working_on_every_api_process(settings: Settings, make_key):
    # How soon is bench/key_revocation.py's to measure; FITSERVE_KEY_POLL_SECONDS bounds it.
    admin_key = make_key("ops", "admin")
    key = make_key("team", "predict")
    with (
        ApiProcess(settings, FITSERVE_AUTH="required") as first,
        ApiProcess(settings, FITSERVE_AUTH="required") as second,
    ):
        clients = [_client(first, key), _client(second, key)]
        for client in clients:
            assert client.get("/models").status_code == 200
        key_id = next(
            item["id"]
            for item in _client(first, admin_key).get("/keys").json()
            if key.startswith(f"fsk_{item['prefix']}_")
        )
        assert _client(first, admin_key).delete(f"/keys/{key_id}").status_code == 204
        for client in clients:
            wait_until(
                lambda client=client: client.get("/models").status_code == 401,
                message="the revoked key refused",
            )


def test_quotas_answer_429_naming_the_quota(secured, make_key):
    admin = _client(secured, make_key("ops", "admin"))
    team = _client(secured, make_key("small", "train"))
    assert team.put("/projects/small/quota", json={"max_queued_runs": 2}).status_code == 403
    quota = {"max_queued_runs": 2, "max_rows_x_epochs": 5_000, "max_dataset_bytes": 60}
    assert admin.put("/projects/small/quota", json=quota).json() == {
        **quota,
        "max_running_runs": None,
    }
    queued = [team.post("/runs", json=D2L_SPEC, headers={"Idempotency-Key": name}) for name in "ab"]
    assert [answer.status_code for answer in queued] == [201, 201]
    # A retry gets its run back although the run itself fills the quota.
    retry = team.post("/runs", json=D2L_SPEC, headers={"Idempotency-Key": "b"})
    assert (retry.status_code, retry.json()["id"]) == (200, queued[1].json()["id"])
    # A run that cannot resume says so (409), whatever the quota.
    assert team.post(f"/runs/{queued[0].json()['id']}/resume").status_code == 409
    over = team.post("/runs", json=D2L_SPEC)
    assert over.status_code == 429
    assert int(over.headers["retry-after"]) > 0
    assert over.json()["detail"].startswith("quota max_queued_runs of project 'small' is 2")
    big = team.post("/runs", json={**D2L_SPEC, "epochs": 6})
    assert big.status_code == 429
    assert "max_rows_x_epochs" in big.json()["detail"]
    # Resuming with more epochs counts against the run-size quota too.
    first_id = queued[0].json()["id"]
    assert team.post(f"/runs/{first_id}/cancel").status_code == 200
    longer = team.post(f"/runs/{first_id}/resume", json={"epochs": 6})
    assert (longer.status_code, "max_rows_x_epochs" in longer.text) == (429, True)
    assert team.post(f"/runs/{first_id}/resume").status_code == 200
    first = team.post("/datasets", json={"columns": COLUMNS, "target": "y"})
    assert first.status_code == 201, first.text
    second = team.post(
        "/datasets", json={"columns": {**COLUMNS, "x": [5.0, 6, 7, 8]}, "target": "y"}
    )
    assert second.status_code == 429
    assert "max_dataset_bytes" in second.json()["detail"]
    # Another project is not held to this one's quota.
    assert (
        _client(secured, make_key("roomy", "train")).post("/runs", json=D2L_SPEC).status_code == 201
    )


def test_every_write_is_audited_with_key_project_and_address(secured, make_key):
    admin = _client(secured, make_key("ops", "admin"))
    # The log outlives the rows each test deletes: a project of its own isolates this run.
    project = f"audited-{uuid.uuid4().hex[:8]}"
    key = make_key(project, "train")
    team = _client(secured, key)
    run_id = team.post("/runs", json=D2L_SPEC).json()["id"]
    assert team.post(f"/runs/{run_id}/cancel").status_code == 200
    assert team.delete(f"/runs/{run_id}").status_code == 204
    page = admin.get("/audit", params={"project": project, "limit": 2}).json()
    rest = admin.get("/audit", params={"project": project, "cursor": page["next_cursor"]}).json()
    events = page["items"] + rest["items"]
    assert [event["action"] for event in events] == ["run.delete", "run.cancel", "run.create"]
    key_id = next(item["id"] for item in admin.get("/keys").json() if item["project"] == project)
    for event in events:
        assert (event["project"], event["key_id"], event["object_type"]) == (project, key_id, "run")
        assert (event["object_id"], event["address"]) == (str(run_id), "127.0.0.1")
    assert rest["next_cursor"] is None
    # The key itself was made by an operator of project default: that write is audited too.
    created = admin.get("/audit", params={"project": "default"}).json()["items"]
    assert ("key.create", "key", str(key_id)) in {
        (event["action"], event["object_type"], event["object_id"]) for event in created
    }


def test_every_protected_operation_answers_401_without_a_key(secured):
    anonymous = _client(secured)
    schema = anonymous.get("/openapi.json").json()
    checked = 0
    for path, operations in schema["paths"].items():
        for method in operations:
            concrete = path.replace("{name}", "m").replace("{alias}", "prod")
            concrete = concrete.replace("{run_id}", "1").replace("{dataset_id}", "1")
            concrete = concrete.replace("{key_id}", "1")
            answer = anonymous.request(method, concrete)
            expected = 200 if path == "/healthz" else 401
            assert answer.status_code == expected, (method, path, answer.text)
            checked += 1
    assert checked >= 25


def test_the_first_key_turns_auth_on_for_a_loopback_service(settings: Settings, make_key):
    with ApiServer(create_app(settings.model_copy(update={"auth": None}))) as server:
        anonymous = _client(server)
        assert anonymous.get("/runs").status_code == 200
        # Open only to this machine: not to a web page elsewhere, nor a rebound name.
        for headers in ({"Origin": "https://evil.example"}, {"Host": "evil.example"}):
            refused = anonymous.post("/datasets/builtin/iris", headers=headers)
            assert refused.status_code == 401, headers
            assert "only requests from this machine" in refused.json()["detail"]
        key = make_key("team", "train")
        wait_until(lambda: anonymous.get("/runs").status_code == 401, timeout=2)
        assert _client(server, key).get("/runs").status_code == 200


def test_keys_create_prints_the_key_alone_on_the_last_line(secured, settings: Settings):
    fitserve = Path(sys.executable).with_name("fitserve")
    created = subprocess.run(
        [str(fitserve), "keys", "create", "--project", "cli", "--role", "train", "--label", "ci"],
        env={**storage_env(settings), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.splitlines()[-1]
    assert key.startswith("fsk_") and " " not in key
    assert _client(secured, key).get("/runs").status_code == 200


def test_answers_carry_a_request_id_and_security_headers(secured, make_key):
    client = _client(secured, make_key("team", "train"))
    answer = client.get("/runs", headers={"X-Request-ID": "trace-42"})
    assert answer.headers["x-request-id"] == "trace-42"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    generated = client.get("/runs", headers={"X-Request-ID": "bad id with spaces"})
    made = {client.get("/runs").headers["x-request-id"] for _ in range(2)}
    assert generated.headers["x-request-id"] not in made and len(made) == 2
    assert (
        "access-control-allow-origin"
        not in client.get("/runs", headers={"Origin": "https://evil.example"}).headers
    )


def test_cors_answers_only_the_origins_in_the_settings(settings: Settings, workers: LocalWorkers):
    workers.start()
    allowed = "https://dashboard.example"
    app = create_app(settings.model_copy(update={"cors_origins": [allowed]}))
    with ApiServer(app) as server:
        client = _client(server)
        run_id = _trained_run(client)["id"]
        # Cold (through the app), then warm (the fast path): both carry the header.
        for _ in range(2):
            predicted = client.post(
                f"/runs/{run_id}/predict", json={"inputs": [[1, 1]]}, headers={"Origin": allowed}
            )
            assert predicted.headers["access-control-allow-origin"] == allowed
        preflight = client.options(
            "/runs",
            headers={"Origin": allowed, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        other = client.get("/runs", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
