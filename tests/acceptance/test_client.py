"""The Python client against a live server and real workers: runs, events, datasets, models,
errors, and its contract with the API's OpenAPI schemas."""

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import safetensors.torch
import yaml
from pydantic import BaseModel

from app.config import Settings
from app.database import Database
from app.keys import flows
from app.main import create_app
from app.principal import Principal, Role
from fitserve_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    FitserveAPIError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
    models,
)
from fitserve_client import _api as client_api
from tests.helpers import D2L_SPEC, ApiServer, LocalWorkers

IRIS = Path(str(resources.files("app.datasets").joinpath("builtin", "iris.csv")))
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def fitserve(api: ApiServer) -> Iterator[Client]:
    with Client(api.url, timeout=30) as client:
        yield client


def _statuses(events: list[models.Event]) -> list[str]:
    return [event.data["status"] for event in events if event.type == "status"]


def test_d2l_run_waits_streams_events_and_resumes_without_duplicates(
    fitserve: Client, workers: LocalWorkers
):
    workers.start()
    run = fitserve.runs.create(D2L_SPEC, idempotency_key="client-d2l")
    assert run.status == "queued"
    assert fitserve.runs.create(D2L_SPEC, idempotency_key="client-d2l").id == run.id

    final = fitserve.runs.wait(run.id, timeout=60)
    assert final.status == "succeeded", final
    assert final.progress.epoch == final.progress.epochs == 3
    assert [epoch.epoch for epoch in fitserve.runs.epochs(run.id)] == [1, 2, 3]

    events = list(fitserve.runs.events(run.id))
    epochs = [event for event in events if event.type == "epoch"]
    assert [event.data["epoch"] for event in epochs] == [1, 2, 3]
    assert {"train_loss", "val_loss", "metrics", "seconds", "attempt"} <= set(epochs[0].data)
    assert events[-1].type == "status" and events[-1].data["status"] == "succeeded"
    assert events[-1].final and not events[0].final
    ids = [event.id for event in events]
    assert ids == sorted(set(ids))

    # Picking up after any event gives exactly what followed it.
    middle = epochs[1].id
    resumed = list(fitserve.runs.events(run.id, last_event_id=middle))
    assert resumed == [event for event in events if event.id > middle]

    weights = fitserve.runs.weights(run.id)
    assert weights.tensors["net.0.weight"].shape == [1, 2]
    # The file is safetensors holding the same tensors as the JSON form.
    stored = safetensors.torch.load(fitserve.runs.weights_file(run.id))
    assert {name: list(tensor.shape) for name, tensor in stored.items()} == {
        name: tensor.shape for name, tensor in weights.tensors.items()
    }
    assert stored["net.0.weight"].tolist() == weights.tensors["net.0.weight"].values


def test_async_client_does_the_same(api: ApiServer, workers: LocalWorkers, tmp_path: Path):
    workers.start()
    spec_file = tmp_path / "d2l.yaml"
    spec_file.write_text(yaml.safe_dump(D2L_SPEC))

    async def scenario() -> tuple[models.Run, list[models.Event], list[models.Event]]:
        async with AsyncClient(api.url) as client:
            run = await client.runs.create(spec_file)
            final = await client.runs.wait(run.id, timeout=60)
            events = [event async for event in client.runs.events(run.id)]
            after = events[0].id
            resumed = [event async for event in client.runs.events(run.id, last_event_id=after)]
            listed = [item.id async for item in client.runs.list(limit=5)]
            assert run.id in listed
            with pytest.raises(NotFoundError):
                await client.runs.get(10**6)
            return final, events, resumed

    final, events, resumed = asyncio.run(scenario())
    assert final.status == "succeeded"
    assert [event.data["epoch"] for event in events if event.type == "epoch"] == [1, 2, 3]
    assert _statuses(events)[-1] == "succeeded"
    assert resumed == events[1:]


@pytest.mark.once
def test_wait_polls_when_the_server_has_no_event_stream(
    fitserve: Client, workers: LocalWorkers, monkeypatch: pytest.MonkeyPatch
):
    workers.start()
    original = client_api.EventFollower.request

    def missing_route(self: client_api.EventFollower) -> client_api.Request:
        request = original(self)
        return client_api.Request("GET", f"/no-such-route/{self.run_id}", headers=request.headers)

    monkeypatch.setattr(client_api.EventFollower, "request", missing_route)
    run = fitserve.runs.create(D2L_SPEC)
    assert fitserve.runs.wait(run.id, timeout=60).status == "succeeded"
    with pytest.raises(NotFoundError):
        fitserve.runs.wait(10**6, timeout=5)


@pytest.mark.once
def test_wait_times_out(fitserve: Client):
    run = fitserve.runs.create(D2L_SPEC)  # no worker: it stays queued
    with pytest.raises(TimeoutError, match=f"run {run.id}"):
        fitserve.runs.wait(run.id, timeout=0.5)
    cancelled = fitserve.runs.cancel(run.id)
    assert cancelled.status == "cancelled"
    assert _statuses(list(fitserve.runs.events(run.id)))[-1] == "cancelled"


@pytest.mark.once
def test_runs_list_walks_every_page(fitserve: Client, monkeypatch: pytest.MonkeyPatch):
    created = [fitserve.runs.create(D2L_SPEC).id for _ in range(5)]
    monkeypatch.setattr(client_api, "MAX_PAGE_SIZE", 2)
    assert [run.id for run in fitserve.runs.list()] == created[::-1]
    assert [run.id for run in fitserve.runs.list(limit=3)] == created[::-1][:3]
    assert [run.id for run in fitserve.runs.list(status="succeeded")] == []
    fitserve.runs.cancel(created[0])
    fitserve.runs.delete(created[0])
    with pytest.raises(NotFoundError):
        fitserve.runs.get(created[0])


@pytest.mark.once
def test_errors_carry_the_detail(fitserve: Client):
    with pytest.raises(ValidationError) as invalid:
        fitserve.runs.create({**D2L_SPEC, "epochs": 0})
    error = invalid.value
    assert error.status == 422
    assert "epochs" in error.loc
    assert "epochs" in error.message and "epochs" in str(error)
    assert isinstance(error.detail, list) and error.detail[0]["loc"] == error.loc

    with pytest.raises(NotFoundError) as missing:
        fitserve.runs.get(10**6)
    assert missing.value.status == 404
    assert missing.value.detail == "run 1000000 not found"
    assert missing.value.request_id
    assert isinstance(missing.value, FitserveAPIError)

    run = fitserve.runs.create(D2L_SPEC)
    with pytest.raises(ConflictError):
        fitserve.runs.resume(run.id)
    with pytest.raises(NotFoundError):
        list(fitserve.runs.events(10**6))


@pytest.mark.once
def test_datasets_upload_from_a_path_and_from_an_arrow_table(fitserve: Client):
    seen: list[tuple[int, int | None]] = []
    dataset = fitserve.datasets.upload(
        IRIS, target="species", on_progress=lambda sent, total: seen.append((sent, total))
    )
    assert dataset.n_rows == 150 and dataset.name == "iris.csv"
    assert dataset.task == "classification"
    assert dataset.preview[0] == {**SETOSA, "species": "setosa"}
    size = IRIS.stat().st_size
    assert seen[0] == (0, size) and seen[-1] == (size, size)

    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [2.1, 3.9, 6.2, 7.8]})
    from_table = fitserve.datasets.upload(table, target="y", name="line")
    assert from_table.format == "parquet" and from_table.n_rows == 4
    assert from_table.name == "line" and from_table.features == ["x"]

    assert [item.id for item in fitserve.datasets.list()] == [from_table.id, dataset.id]
    assert fitserve.datasets.get(dataset.id).stats["species"]["classes"][0] == ["setosa", 50]
    fitserve.datasets.delete(from_table.id)
    with pytest.raises(NotFoundError):
        fitserve.datasets.get(from_table.id)


@pytest.mark.once
def test_datasets_upload_json_and_bad_uploads(fitserve: Client, tmp_path: Path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps([{"x": 1.0, "y": "a"}, {"x": 2.0, "y": "b"}, {"x": 3, "y": "a"}]))
    dataset = fitserve.datasets.upload(path, target="y")
    assert dataset.format == "json" and dataset.n_rows == 3 and dataset.name == "tiny.json"

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,five\n")
    with pytest.raises(ValidationError, match="five"):
        fitserve.datasets.upload(bad, target="a")


@pytest.mark.once
def test_register_alias_and_predict_by_name(fitserve: Client, workers: LocalWorkers):
    workers.start()
    run = fitserve.runs.wait(fitserve.runs.create(D2L_SPEC).id, timeout=60)
    version = fitserve.models.register("prices", run.id)
    assert (version.name, version.version, version.run_id) == ("prices", 1, run.id)
    alias = fitserve.models.set_alias("prices", "production", 1)
    assert alias.run_id == run.id
    assert fitserve.models.get("prices").aliases == {"production": 1}
    assert [model.name for model in fitserve.models.list()] == ["prices"]

    by_alias = fitserve.predict("prices@production", inputs=[[1, 1]])
    assert by_alias.predictions[0] == pytest.approx(2.8, abs=0.02)
    assert (by_alias.model, by_alias.version, by_alias.run_id) == ("prices", 1, run.id)
    by_run = fitserve.predict(run_id=run.id, inputs=[[1.0, 1.0]])
    assert by_run.predictions == by_alias.predictions
    from_csv = fitserve.predict_csv(b"x0,x1\n1,1\n2,0.5\n", "prices@production")
    assert from_csv.predictions[0] == pytest.approx(by_alias.predictions[0])
    assert len(from_csv.predictions) == 2 and from_csv.version == 1

    fitserve.models.delete_alias("prices", "production")
    with pytest.raises(NotFoundError):
        fitserve.predict("prices@production", inputs=[[1, 1]])
    fitserve.models.delete("prices")
    assert fitserve.models.list() == []


@pytest.mark.once
def test_compare_runs(fitserve: Client):
    first = fitserve.runs.create(D2L_SPEC)
    second = fitserve.runs.create({**D2L_SPEC, "epochs": 4})
    comparison = fitserve.runs.compare([first.id, second.id])
    assert [run.id for run in comparison.runs] == [first.id, second.id]
    assert comparison.spec_differences["epochs"] == [3, 4]


@pytest.mark.once
def test_the_client_needs_none_of_the_server_dependencies():
    code = (
        "import sys, fitserve_client\n"
        "heavy = {'app', 'torch', 'sqlalchemy', 'fastapi', 'starlette', 'pyarrow', 'numpy'}\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.once
def test_events_resume_after_a_dropped_connection(monkeypatch: pytest.MonkeyPatch):
    """A stream cut mid-way is reopened with Last-Event-ID; nothing is handed out twice."""
    messages = [
        (1, "status", {"run_id": 7, "status": "running", "progress": {"epoch": 0, "epochs": 2}}),
        (2, "epoch", {"run_id": 7, "epoch": 1, "train_loss": 0.5}),
        (3, "epoch", {"run_id": 7, "epoch": 2, "train_loss": 0.25}),
        (4, "status", {"run_id": 7, "status": "succeeded", "progress": {"epoch": 2, "epochs": 2}}),
    ]
    asked: list[str | None] = []

    def body(after: int, drop_after: int | None) -> Iterator[bytes]:
        for event_id, kind, data in messages:
            if event_id <= after:
                continue
            # A replay that overlaps what was sent must not show twice.
            yield f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            if drop_after is not None and event_id >= drop_after:
                raise httpx.RemoteProtocolError("peer closed connection")

    def handler(request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        asked.append(last)
        # The first connection breaks after event 2; the second replays one event too many.
        after, drop = (0, 2) if last is None else (int(last) - 1, None)
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_Chunks(body(after, drop)),
        )

    monkeypatch.setattr(client_api, "EVENTS_MAX_RETRIES", 2)
    with Client("http://fitserve.test") as client:
        client._transport.http = httpx.Client(
            base_url="http://fitserve.test", transport=httpx.MockTransport(handler)
        )
        events = list(client.runs.events(7))
    assert [event.id for event in events] == [1, 2, 3, 4]
    assert asked == [None, "2"]
    assert events[-1].final


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


# Which API schema each client model mirrors, found through the operation that answers it.
CONTRACT: list[tuple[str, str, type[BaseModel]]] = [
    ("get", "/runs/{run_id}", models.Run),
    ("get", "/runs", models.Page),
    ("get", "/runs/{run_id}/weights", models.Weights),
    ("get", "/runs/compare", models.Comparison),
    ("get", "/datasets/{dataset_id}", models.Dataset),
    ("post", "/models", models.ModelVersion),
    ("get", "/models/{name}", models.Model),
    ("put", "/models/{name}/aliases/{alias}", models.Alias),
    ("post", "/predict", models.Prediction),
    ("get", "/sweeps/{sweep_id}", models.Sweep),
]
NESTED: list[tuple[str, type[BaseModel]]] = [
    ("EpochRead", models.Epoch),
    ("DatasetSummary", models.DatasetSummary),
    ("ModelSummary", models.ModelSummary),
    ("VersionDetail", models.ModelVersionDetail),
    ("Progress", models.Progress),
    ("TensorRead", models.Tensor),
    ("TrialRead", models.Trial),
    ("StoredTable", models.StoredTable),
]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _missing_fields(schema: dict[str, Any], model: type[BaseModel]) -> set[str]:
    return set(model.model_fields) - set(schema.get("properties", {}))


@pytest.mark.once
def test_client_models_match_the_api_schemas(api: ApiServer):
    document = httpx.get(f"{api.url}/openapi.json", timeout=30).json()
    drift: dict[str, set[str]] = {}
    for method, path, model in CONTRACT:
        operation = document["paths"][path][method]
        answer = next(
            response
            for status, response in operation["responses"].items()
            if status.startswith("2")
        )
        schema = _resolve(document, answer["content"]["application/json"]["schema"])
        if missing := _missing_fields(schema, model):
            drift[f"{model.__name__} ({method} {path})"] = missing
    for name, model in NESTED:
        if missing := _missing_fields(document["components"]["schemas"][name], model):
            drift[f"{model.__name__} ({name})"] = missing
    assert drift == {}


@pytest.mark.once
def test_the_key_goes_as_a_bearer_token(settings: Settings):
    database = Database.connect(settings.database_url)
    try:
        _row, key = flows.create_key(
            database=database,
            project="client",
            role=Role.PREDICT,
            label=None,
            principal=Principal(project="default", role=Role.ADMIN, address="test"),
        )
    finally:
        database.dispose()
    with ApiServer(create_app(settings.model_copy(update={"auth": "required"}))) as secured:
        with Client(secured.url) as anonymous, pytest.raises(AuthenticationError):
            anonymous.models.list()
        with Client(secured.url, key) as predictor:
            assert predictor.models.list() == []
            with pytest.raises(PermissionDeniedError, match="train role"):
                predictor.runs.create(D2L_SPEC)


GRID_SWEEP: dict[str, Any] = {
    "base": {"dataset": {"type": "synthetic_linear", "n_samples": 200}, "epochs": 2},
    "space": {"optimizer.lr": [0.003, 0.03]},
    "strategy": {"type": "grid"},
    "objective": {"metric": "train_loss"},
    "max_concurrent": 2,
}


@pytest.mark.once
def test_sweeps_create_wait_list_and_cancel(fitserve: Client, workers: LocalWorkers):
    workers.start()
    sweep = fitserve.sweeps.create(GRID_SWEEP)
    assert (sweep.status, sweep.total_trials, len(sweep.trials)) == ("running", 2, 2)
    done = fitserve.sweeps.wait(sweep.id, timeout=120)
    assert done.finished and done.status == "succeeded"
    best = min(done.trials, key=lambda trial: trial.objective or float("inf"))
    assert done.best_run_id == best.run_id
    assert next(listed.id for listed in fitserve.sweeps.list()) == sweep.id
    with pytest.raises(ConflictError):
        fitserve.sweeps.cancel(sweep.id)
    queued = fitserve.sweeps.create({**GRID_SWEEP, "max_concurrent": 1})
    assert fitserve.sweeps.cancel(queued.id).status == "cancelled"
