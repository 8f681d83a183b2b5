"""What `Client` and `AsyncClient` share: request building, answer parsing, paging, the
event-stream bookkeeping and upload bodies. Nothing here does network I/O."""

import csv
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from httpx_sse import ServerSentEvent, SSEError
from pydantic import BaseModel, TypeAdapter

from fitserve_client._http import Call, Request
from fitserve_client.errors import FitserveAPIError, FitserveStreamError
from fitserve_client.models import (
    Alias,
    Comparison,
    Dataset,
    DatasetSummary,
    Epoch,
    Event,
    Model,
    ModelSummary,
    ModelVersion,
    Page,
    Prediction,
    Run,
    Sweep,
    Weights,
)

Item = TypeVar("Item")
Parsed = TypeVar("Parsed", bound=BaseModel)

SpecSource = Mapping[str, Any] | str | os.PathLike[str]
ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes sent so far, total bytes or None) as an upload goes out."""

MAX_PAGE_SIZE = 200
UPLOAD_CHUNK_BYTES = 256 * 1024
# A silent event stream is reopened (from the last event id) after this long, so a dead
# connection is noticed; the server's keep-alive pings keep a live one open.
EVENTS_IDLE_SECONDS = 30.0
EVENTS_MAX_RETRIES = 8
_MODEL_REF = re.compile(r"^(?P<name>[^@:]+)(?:@(?P<alias>.+)|:(?P<version>\d+))?$")


def _model(kind: type[Parsed]) -> Callable[[httpx.Response], Parsed]:
    return lambda response: kind.model_validate(response.json())


def _listing(kind: type[Item]) -> Callable[[httpx.Response], list[Item]]:
    adapter = TypeAdapter(list[kind])  # type: ignore[valid-type]
    return lambda response: adapter.validate_python(response.json())


def _nothing(_response: httpx.Response) -> None:
    return None


def _bytes(response: httpx.Response) -> bytes:
    return response.content


def load_spec(spec: SpecSource) -> dict[str, Any]:
    """A run spec from a mapping, or from a JSON or YAML file."""
    if isinstance(spec, Mapping):
        return dict(spec)
    path = Path(spec)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # only spec files need it

        loaded = yaml.safe_load(text)
    else:
        loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a run spec object")
    return loaded


# Runs


def create_run(spec: SpecSource, idempotency_key: str | None) -> Call[Run]:
    """POST /runs."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call(Request("POST", "/runs", json=load_spec(spec), headers=headers), _model(Run))


def get_run(run_id: int) -> Call[Run]:
    """GET /runs/{id}."""
    return Call(Request("GET", f"/runs/{run_id}"), _model(Run))


def run_page(filters: Mapping[str, Any], page_size: int, cursor: str | None) -> Call[Page[Run]]:
    """GET /runs, one page."""
    params = {**filters, "limit": page_size, "cursor": cursor}
    return Call(Request("GET", "/runs", params=params), _model(Page[Run]))


def run_epochs(run_id: int) -> Call[list[Epoch]]:
    """GET /runs/{id}/epochs."""
    return Call(Request("GET", f"/runs/{run_id}/epochs"), _listing(Epoch))


def cancel_run(run_id: int) -> Call[Run]:
    """POST /runs/{id}/cancel."""
    return Call(Request("POST", f"/runs/{run_id}/cancel"), _model(Run))


def resume_run(run_id: int, epochs: int | None) -> Call[Run]:
    """POST /runs/{id}/resume."""
    body = {"epochs": epochs} if epochs is not None else None
    return Call(Request("POST", f"/runs/{run_id}/resume", json=body), _model(Run))


def delete_run(run_id: int) -> Call[None]:
    """DELETE /runs/{id}."""
    return Call(Request("DELETE", f"/runs/{run_id}"), _nothing)


def compare_runs(run_ids: Sequence[int]) -> Call[Comparison]:
    """GET /runs/compare?ids=..."""
    params = {"ids": ",".join(str(run_id) for run_id in run_ids)}
    return Call(Request("GET", "/runs/compare", params=params), _model(Comparison))


def create_sweep(spec: SpecSource) -> Call[Sweep]:
    """POST /sweeps; `spec` is the sweep body, or a JSON or YAML file holding it."""
    return Call(Request("POST", "/sweeps", json=load_spec(spec)), _model(Sweep))


def get_sweep(sweep_id: int) -> Call[Sweep]:
    """GET /sweeps/{id}."""
    return Call(Request("GET", f"/sweeps/{sweep_id}"), _model(Sweep))


def sweep_page(
    _filters: Mapping[str, Any], page_size: int, cursor: str | None
) -> Call[Page[Sweep]]:
    """GET /sweeps, one page."""
    params = {"limit": page_size, "cursor": cursor}
    return Call(Request("GET", "/sweeps", params=params), _model(Page[Sweep]))


def cancel_sweep(sweep_id: int) -> Call[Sweep]:
    """POST /sweeps/{id}/cancel."""
    return Call(Request("POST", f"/sweeps/{sweep_id}/cancel"), _model(Sweep))


def run_weights(run_id: int) -> Call[Weights]:
    """GET /runs/{id}/weights as JSON."""
    return Call(Request("GET", f"/runs/{run_id}/weights"), _model(Weights))


def run_weights_file(run_id: int) -> Call[bytes]:
    """GET /runs/{id}/weights as a safetensors file."""
    params = {"format": "safetensors"}
    return Call(Request("GET", f"/runs/{run_id}/weights", params=params), _bytes)


# Datasets


def get_dataset(dataset_id: int) -> Call[Dataset]:
    """GET /datasets/{id}."""
    return Call(Request("GET", f"/datasets/{dataset_id}"), _model(Dataset))


def dataset_page(
    _filters: Mapping[str, Any], page_size: int, cursor: str | None
) -> Call[Page[DatasetSummary]]:
    """GET /datasets, one page."""
    params = {"limit": page_size, "cursor": cursor}
    return Call(Request("GET", "/datasets", params=params), _model(Page[DatasetSummary]))


def delete_dataset(dataset_id: int, force: bool) -> Call[None]:
    """DELETE /datasets/{id}."""
    params = {"force": "true"} if force else None
    return Call(Request("DELETE", f"/datasets/{dataset_id}", params=params), _nothing)


def store_builtin(name: str) -> Call[Dataset]:
    """POST /datasets/builtin/{name}."""
    return Call(Request("POST", f"/datasets/builtin/{name}"), _model(Dataset))


def _counted(
    chunks: Iterator[bytes], total: int | None, on_progress: ProgressCallback | None
) -> Iterator[bytes]:
    sent = 0
    if on_progress is not None:
        on_progress(0, total)
    for chunk in chunks:
        yield chunk
        sent += len(chunk)
        if on_progress is not None:
            on_progress(sent, total)


def _file_chunks(path: Path) -> Iterator[bytes]:
    # Opened only once the transport starts sending, and closed when it is done.
    with path.open("rb") as file:
        while chunk := file.read(UPLOAD_CHUNK_BYTES):
            yield chunk


def _memory_chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), UPLOAD_CHUNK_BYTES):
        yield data[start : start + UPLOAD_CHUNK_BYTES]


def _table_as_parquet(table: Any) -> bytes:
    # pyarrow is needed only here, and pandas only as the caller's own object.
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _json_dataset_body(path: Path, options: dict[str, Any]) -> bytes:
    """A JSON file as the API's JSON upload: records (a list) or columns (an object)."""
    loaded = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(loaded, dict) and ("records" in loaded or "columns" in loaded):
        body = {**loaded, **options}
    elif isinstance(loaded, list):
        body = {**options, "records": loaded}
    else:
        body = {**options, "columns": loaded}
    return json.dumps(body).encode()


def upload_dataset(
    source: "str | os.PathLike[str] | Any",
    *,
    target: str,
    name: str | None,
    features: Sequence[str] | None,
    missing: str | None,
    task: str | None,
    delimiter: str | None,
    on_progress: ProgressCallback | None,
) -> Call[Dataset]:
    """POST /datasets with a CSV, Parquet or JSON file, or a pyarrow Table / pandas DataFrame.

    Files go as the whole body with the options in the query, streamed in chunks so that
    `on_progress` sees the bytes go out; JSON files become the API's JSON body.
    """
    options: dict[str, Any] = {
        "target": target,
        "missing": missing,
        "task": task,
        "delimiter": delimiter,
        "features": list(features) if features is not None else None,
    }
    if name is not None:
        options["name"] = name
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        options = {"name": path.name, **options}
        if path.suffix.lower() == ".json":
            given = {key: value for key, value in options.items() if value is not None}
            data = _json_dataset_body(path, given)
            chunks, total, content_type, params = _memory_chunks(data), len(data), "json", None
        else:
            chunks, total = _file_chunks(path), path.stat().st_size
            content_type, params = "octet-stream", options
    else:
        data = _table_as_parquet(source)
        chunks, total, content_type = _memory_chunks(data), len(data), "octet-stream"
        params = {"name": "table", **options}
    if params is not None and isinstance(params.get("features"), list):
        params = {**params, "features": ",".join(params["features"])}
    headers = {"Content-Type": f"application/{content_type}", "Content-Length": str(total)}
    request = Request(
        "POST",
        "/datasets",
        params=params,
        content=_counted(chunks, total, on_progress),
        headers=headers,
    )
    return Call(request, _model(Dataset))


# Models and predictions


def register_model(name: str, run_id: int) -> Call[ModelVersion]:
    """POST /models."""
    body = {"name": name, "run_id": run_id}
    return Call(Request("POST", "/models", json=body), _model(ModelVersion))


def list_models() -> Call[list[ModelSummary]]:
    """GET /models."""
    return Call(Request("GET", "/models"), _listing(ModelSummary))


def get_model(name: str) -> Call[Model]:
    """GET /models/{name}."""
    return Call(Request("GET", f"/models/{name}"), _model(Model))


def delete_model(name: str) -> Call[None]:
    """DELETE /models/{name}."""
    return Call(Request("DELETE", f"/models/{name}"), _nothing)


def set_alias(name: str, alias: str, version: int) -> Call[Alias]:
    """PUT /models/{name}/aliases/{alias}."""
    request = Request("PUT", f"/models/{name}/aliases/{alias}", json={"version": version})
    return Call(request, _model(Alias))


def delete_alias(name: str, alias: str) -> Call[None]:
    """DELETE /models/{name}/aliases/{alias}."""
    return Call(Request("DELETE", f"/models/{name}/aliases/{alias}"), _nothing)


def _target(model: str | None, run_id: int | None) -> dict[str, Any]:
    if (model is None) == (run_id is None):
        raise ValueError("give exactly one of model and run_id")
    return {"model": model} if model is not None else {"run_id": run_id}


def predict(
    model: str | None,
    run_id: int | None,
    inputs: Sequence[Sequence[float]] | None,
    records: Sequence[Mapping[str, float]] | None,
) -> Call[Prediction]:
    """POST /predict with rows as lists (`inputs`) or keyed by feature name (`records`)."""
    if (inputs is None) == (records is None):
        raise ValueError("give exactly one of inputs and records")
    body: dict[str, Any] = _target(model, run_id)
    if inputs is not None:
        body["inputs"] = [list(row) for row in inputs]
    else:
        body["records"] = [dict(row) for row in records or []]
    return Call(Request("POST", "/predict", json=body), _model(Prediction))


def _cell(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _csv_prediction(response: httpx.Response) -> Prediction:
    """A CSV answer (prediction, then probability_<class> columns) as a Prediction."""
    lines = list(csv.reader(io.StringIO(response.text)))
    header, rows = lines[0], [line for line in lines[1:] if line]
    classes = [_cell(name.removeprefix("probability_")) for name in header[1:]] or None
    version = response.headers.get("x-model-version")
    return Prediction(
        run_id=int(response.headers["x-run-id"]),
        weights_sha256=response.headers["x-weights-sha256"],
        model=response.headers.get("x-model"),
        version=int(version) if version else None,
        predictions=[_cell(row[0]) for row in rows],
        classes=classes,
        probabilities=[[float(value) for value in row[1:]] for row in rows] if classes else None,
    )


def predict_csv(
    model: str | None, run_id: int | None, source: bytes | str | os.PathLike[str]
) -> Call[Prediction]:
    """POST a CSV (a header naming the features, then one row per line) to predict with.

    The server maps named columns to the model's features, so any column order works for a
    model trained on a stored dataset.
    """
    target = _target(model, run_id)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    headers = {"Content-Type": "text/csv"}
    if "run_id" in target:
        request = Request("POST", f"/runs/{run_id}/predict", content=data, headers=headers)
        return Call(request, _csv_prediction)
    match = _MODEL_REF.match(target["model"])
    if match is None:
        raise ValueError(f"{model!r} is not name, name@alias or name:version")
    params = {"alias": match["alias"], "version": match["version"]}
    path = f"/models/{match['name']}/predict"
    request = Request("POST", path, params=params, content=data, headers=headers)
    return Call(request, _csv_prediction)


# Paging, waiting and events: the state both clients drive, each with its own I/O.


class Pager(Generic[Item]):
    """Walks a newest-first listing page by page, up to `limit` items (None: all)."""

    def __init__(
        self,
        page: Callable[[Mapping[str, Any], int, str | None], Call[Page[Item]]],
        filters: Mapping[str, Any],
        limit: int | None,
    ) -> None:
        self._page = page
        self._filters = filters
        self._remaining = limit
        self._cursor: str | None = None
        self._done = limit is not None and limit <= 0

    def next_call(self) -> Call[Page[Item]] | None:
        """The request for the next page, or None when the listing is done."""
        if self._done:
            return None
        size = MAX_PAGE_SIZE if self._remaining is None else min(self._remaining, MAX_PAGE_SIZE)
        return self._page(self._filters, size, self._cursor)

    def take(self, page: Page[Item]) -> list[Item]:
        """The items of a page to hand out, noting where the next page starts."""
        items = page.items if self._remaining is None else page.items[: self._remaining]
        if self._remaining is not None:
            self._remaining -= len(items)
        self._cursor = page.next_cursor
        self._done = page.next_cursor is None or self._remaining == 0 or not page.items
        return items


class Deadline:
    """An optional point in time after which waiting on a run or a sweep is an error."""

    def __init__(self, run_id: int, timeout: float | None, *, kind: str = "run") -> None:
        self.run_id = run_id
        self.kind = kind
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float:
        """Seconds left (infinite without a timeout); raises TimeoutError when none are."""
        if self._end is None:
            return math.inf
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{self.kind} {self.run_id} did not finish within {self.timeout:g}s")
        return left

    def sleep_for(self, seconds: float) -> float:
        """How long to sleep: `seconds`, or less if the deadline comes first."""
        return min(seconds, self.remaining())


class Poller:
    """Back-off between polls of a run, for servers without an event stream."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self._interval = 0.1

    def delay(self) -> float:
        """Seconds to wait before the next poll."""
        self._interval = min(self._interval * 1.5, 2.0)
        return self.deadline.sleep_for(self._interval)


class EventFollower:
    """Follows a run's event stream across reconnections, with no event twice.

    A dropped or silent connection is reopened with `Last-Event-ID`, so the server replays
    only what came after the last event handed out.
    """

    def __init__(self, run_id: int, last_event_id: int | None, deadline: Deadline) -> None:
        self.run_id = run_id
        self.last_event_id = last_event_id
        self.deadline = deadline
        self.done = False
        self._failures = 0

    def request(self) -> Request:
        """The request that opens (or reopens) the stream."""
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        idle = min(EVENTS_IDLE_SECONDS, self.deadline.remaining())
        timeout = httpx.Timeout(10.0, read=idle)
        return Request("GET", f"/runs/{self.run_id}/events", headers=headers, timeout=timeout)

    def accept(self, message: ServerSentEvent) -> Event | None:
        """The event in a message, or None for one already seen (or without an id)."""
        if not message.id or not message.id.isdigit():
            return None
        event_id = int(message.id)
        if self.last_event_id is not None and event_id <= self.last_event_id:
            return None
        event = Event(id=event_id, type=message.event, data=message.json() if message.data else {})
        self.last_event_id = event_id
        self._failures = 0
        self.done = event.final
        return event

    def retry_delay(self, error: Exception | None) -> float:
        """After the stream ended (`error` None) or broke: how long to wait before reopening."""
        if isinstance(error, httpx.ReadTimeout):
            # Only silence: a queued run may wait long for a worker; reopen at once.
            return self.deadline.sleep_for(0.0)
        self._failures += 1
        if self._failures > EVENTS_MAX_RETRIES:
            if error is not None:
                raise error
            raise FitserveStreamError(
                f"the event stream of run {self.run_id} ended {EVENTS_MAX_RETRIES} times "
                "before the run finished"
            )
        return self.deadline.sleep_for(min(0.1 * 2**self._failures, 5.0))


def events_unavailable(error: Exception) -> bool:
    """Whether opening the event stream failed because the server has none (an older one)."""
    if isinstance(error, SSEError):
        return True
    return isinstance(error, FitserveAPIError) and error.status in (404, 405)
