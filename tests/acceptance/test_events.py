"""Run events over Server-Sent Events, with real worker processes and a real database."""

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from app.config import Settings
from app.main import create_app
from tests.helpers import (
    D2L_SPEC,
    ApiProcess,
    ApiServer,
    LocalWorkers,
    Pause,
    long_spec,
    post_run,
    wait_for,
)

Event = tuple[int, str, dict[str, Any]]
# What a three-epoch run's stream carries, from queued to succeeded.
D2L_EVENTS = [
    "status:queued",
    "status:running",
    "epoch:1",
    "epoch:2",
    "epoch:3",
    "status:succeeded",
]


def read_events(
    client: httpx.Client, path: str, last_event_id: int | None = None, limit: int | None = None
) -> list[Event]:
    """The stream's events until it ends (or `limit` of them)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events: list[Event] = []
    with connect_sse(client, "GET", path, headers=headers, timeout=60) as source:
        assert source.response.status_code == 200, source.response.read()
        for message in source.iter_sse():
            events.append((int(message.id), message.event, json.loads(message.data)))
            if limit is not None and len(events) == limit:
                break
    return events


def kinds(events: list[Event]) -> list[str]:
    """Each event as `status:NAME` or `epoch:N`, in order."""
    return [
        f"status:{data['status']}" if kind == "status" else f"epoch:{data['epoch']}"
        for _id, kind, data in events
    ]


def test_stream_of_a_run_ends_with_its_final_status(
    client: httpx.Client, workers: LocalWorkers
) -> None:
    workers.start()
    run = post_run(client, D2L_SPEC)
    events = read_events(client, f"/runs/{run['id']}/events")

    assert kinds(events) == D2L_EVENTS
    ids = [event_id for event_id, _kind, _data in events]
    assert ids == sorted(set(ids))
    epochs = client.get(f"/runs/{run['id']}/epochs").json()
    assert [data for _id, kind, data in events if kind == "epoch"] == [
        {"run_id": run["id"], **epoch} for epoch in epochs
    ]
    assert events[-1][2] == {
        "run_id": run["id"],
        "status": "succeeded",
        "progress": {"epoch": 3, "epochs": 3},
    }


def test_last_event_id_resumes_with_no_loss_and_no_duplicates(
    client: httpx.Client, workers: LocalWorkers
) -> None:
    workers.start()
    run = post_run(client, D2L_SPEC)
    path = f"/runs/{run['id']}/events"
    first = read_events(client, path, limit=3)
    rest = read_events(client, path, last_event_id=first[-1][0])
    whole = read_events(client, path)

    assert first + rest == whole
    assert kinds(whole)[-1] == "status:succeeded"
    # Past the end there is nothing more to send, and the stream still ends.
    assert read_events(client, path, last_event_id=whole[-1][0]) == []


def test_epochs_arrive_while_the_run_trains(
    client: httpx.Client, workers: LocalWorkers, tmp_path: Path
) -> None:
    run = post_run(client, long_spec(epochs=4))
    pause = Pause(tmp_path)
    workers.start(faults={run["id"]: pause.after_epoch(2)})
    labels: list[str] = []
    with connect_sse(client, "GET", f"/runs/{run['id']}/events", timeout=60) as source:
        for message in source.iter_sse():
            data = json.loads(message.data)
            labels.append(data["status"] if message.event == "status" else f"epoch {data['epoch']}")
            if labels[-1] == "epoch 2":
                # Delivered as it committed: the worker is held after it, mid-run.
                pause.wait()
                assert client.get(f"/runs/{run['id']}").json()["status"] == "running"
                pause.release()
    assert labels == ["queued", "running", "epoch 1", "epoch 2", "epoch 3", "epoch 4", "succeeded"]


def test_cancelled_then_resumed_run_streams_on(client: httpx.Client, workers: LocalWorkers) -> None:
    run = post_run(client, long_spec(epochs=3))
    cancelled = client.post(f"/runs/{run['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    path = f"/runs/{run['id']}/events"
    before = read_events(client, path)
    assert kinds(before) == ["status:queued", "status:cancelled"]

    client.post(f"/runs/{run['id']}/resume").raise_for_status()
    workers.start()
    after = read_events(client, path, last_event_id=before[-1][0])

    assert kinds(after) == D2L_EVENTS


def test_project_stream_carries_every_run_and_starts_now(
    client: httpx.Client, workers: LocalWorkers
) -> None:
    earlier = post_run(client, D2L_SPEC)
    client.post(f"/runs/{earlier['id']}/cancel").raise_for_status()
    received: list[Event] = []

    def listen() -> None:
        with connect_sse(client, "GET", "/events", timeout=60) as source:
            for message in source.iter_sse():
                received.append((int(message.id), message.event, json.loads(message.data)))
                if message.event == "status" and json.loads(message.data)["status"] in (
                    "succeeded",
                    "failed",
                ):
                    return

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.5)
    workers.start()
    run = post_run(client, D2L_SPEC)
    listener.join(60)

    assert not listener.is_alive()
    assert {data["run_id"] for _id, _kind, data in received} == {run["id"]}
    assert kinds(received)[-1] == "status:succeeded"
    replay = read_events_project_until(
        client, "/events", run["id"], "succeeded", headers={"Last-Event-ID": "0"}
    )
    assert {data["run_id"] for _id, _kind, data in replay} == {earlier["id"], run["id"]}


def test_unknown_run_and_bad_last_event_id_are_refused(client: httpx.Client) -> None:
    missing = client.get("/runs/999999/events")
    assert missing.status_code == 404
    assert "run 999999 not found" in missing.json()["detail"]
    run = post_run(client, D2L_SPEC)
    bad = client.get(f"/runs/{run['id']}/events", headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]


@pytest.fixture
def chatty_api(settings: Settings) -> Any:
    """An API whose idle streams send a keep-alive comment every 0.2 s."""
    tuned = settings.model_copy(update={"events_keepalive_seconds": 0.2})
    with ApiServer(create_app(tuned)) as server:
        yield server


def test_idle_stream_sends_keep_alive_comments(chatty_api: ApiServer) -> None:
    with httpx.Client(base_url=chatty_api.url, timeout=10) as http:
        run = post_run(http, D2L_SPEC)
        lines: list[str] = []
        with http.stream("GET", f"/runs/{run['id']}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            started = time.monotonic()
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith(":") or time.monotonic() - started > 5:
                    break
        http.post(f"/runs/{run['id']}/cancel").raise_for_status()
        wait_for(http, run["id"], {"cancelled"})
    assert any(line.startswith(": ping") for line in lines), lines


def test_open_streams_end_cleanly_when_the_api_stops(
    settings: Settings, client: httpx.Client, tmp_path: Path
) -> None:
    run = post_run(client, D2L_SPEC)
    log = tmp_path / "api.log"
    api = ApiProcess(settings, log=log, FITSERVE_LOG_LEVEL="INFO")
    with api, httpx.Client(base_url=api.url, timeout=10) as http:
        with http.stream("GET", f"/runs/{run['id']}/events") as response:
            lines = response.iter_lines()
            assert next(lines).startswith("id: ")
            api.process.send_signal(signal.SIGTERM)
            # The stream ends (the server closes it): a stream left open would fail here with
            # the client's read timeout instead.
            for _line in lines:
                pass
        assert api.process.wait(10) == 0
    logged = log.read_text()
    assert "Finished server process" in logged
    assert "ERROR" not in logged, logged


def test_project_stream_starts_after_the_id_in_the_query(client: httpx.Client) -> None:
    first = post_run(client, D2L_SPEC)
    second = post_run(client, D2L_SPEC)
    client.post(f"/runs/{second['id']}/cancel").raise_for_status()
    replay = read_events_project_until(client, "/events?after=0", second["id"], "cancelled")
    assert {data["run_id"] for _id, _kind, data in replay} == {first["id"], second["id"]}
    after_first = [event_id for event_id, _kind, data in replay if data["run_id"] == first["id"]]
    later = read_events_project_until(
        client, f"/events?after={after_first[-1]}", second["id"], "cancelled"
    )
    assert later == [event for event in replay if event[0] > after_first[-1]]
    # A reconnecting browser sends Last-Event-ID, which wins over the query.
    headers = {"Last-Event-ID": str(replay[-2][0])}
    with connect_sse(client, "GET", "/events?after=0", headers=headers, timeout=30) as source:
        message = next(iter(source.iter_sse()))
    assert int(message.id) == replay[-1][0]


def read_events_project_until(
    client: httpx.Client,
    path: str,
    run_id: int,
    status: str,
    headers: dict[str, str] | None = None,
) -> list[Event]:
    """The project stream at `path` until run `run_id` reaches `status`."""
    events: list[Event] = []
    with connect_sse(client, "GET", path, headers=headers or {}, timeout=60) as source:
        for message in source.iter_sse():
            data = json.loads(message.data)
            events.append((int(message.id), message.event, data))
            if data["run_id"] == run_id and data.get("status") == status:
                break
    return events
