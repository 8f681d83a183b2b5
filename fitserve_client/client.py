"""`Client` and `AsyncClient`: the fitserve API over HTTP, with the same surface.

Each method builds its request in `fitserve_client._api` and hands it to a transport; only the
loops that page, follow events or poll exist twice, once blocking and once `async`.
"""

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_sse import SSEError

from fitserve_client import _api
from fitserve_client._api import (
    Deadline,
    EventFollower,
    Pager,
    Poller,
    ProgressCallback,
    SpecSource,
    events_unavailable,
)
from fitserve_client._http import DEFAULT_TIMEOUT, DEFAULT_URL, AsyncTransport, SyncTransport
from fitserve_client.errors import FitserveAPIError
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
    Prediction,
    Run,
    Sweep,
    Weights,
)

DataSource = str | os.PathLike[str] | Any
CsvSource = bytes | str | os.PathLike[str]


def _run_filters(
    status: str | None, name: str | None, tag: str | None, sort: str | None
) -> dict[str, Any]:
    return {"status": status, "name": name, "tag": tag, "sort": sort}


class Runs:
    """Training runs: `client.runs`."""

    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport

    def create(self, spec: SpecSource, *, idempotency_key: str | None = None) -> Run:
        """Queue a run from a spec mapping or a JSON/YAML file."""
        return self._transport.call(_api.create_run(spec, idempotency_key))

    def get(self, run_id: int) -> Run:
        """One run."""
        return self._transport.call(_api.get_run(run_id))

    def list(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Run]:
        """Runs, newest first (or by `sort`), across pages, up to `limit` (None: all)."""
        pager = Pager(_api.run_page, _run_filters(status, name, tag, sort), limit)
        while (call := pager.next_call()) is not None:
            yield from pager.take(self._transport.call(call))

    def epochs(self, run_id: int) -> builtins.list[Epoch]:
        """One row per finished epoch."""
        return self._transport.call(_api.run_epochs(run_id))

    def cancel(self, run_id: int) -> Run:
        """Cancel a queued run, or stop a running one at its next batch."""
        return self._transport.call(_api.cancel_run(run_id))

    def resume(self, run_id: int, epochs: int | None = None) -> Run:
        """Continue a cancelled or failed run from its checkpoint, optionally to more epochs."""
        return self._transport.call(_api.resume_run(run_id, epochs))

    def delete(self, run_id: int) -> None:
        """Delete a run that is not executing, with its epochs and weights."""
        self._transport.call(_api.delete_run(run_id))

    def compare(self, run_ids: Sequence[int]) -> Comparison:
        """Runs side by side with the spec paths where they differ."""
        return self._transport.call(_api.compare_runs(run_ids))

    def weights(self, run_id: int) -> Weights:
        """The learned weights as named tensors."""
        return self._transport.call(_api.run_weights(run_id))

    def weights_file(self, run_id: int) -> bytes:
        """The learned weights as a safetensors file."""
        return self._transport.call(_api.run_weights_file(run_id))

    def events(self, run_id: int, last_event_id: int | None = None) -> Iterator[Event]:
        """The run's events from the start (or after `last_event_id`) until it finishes."""
        return self._follow(EventFollower(run_id, last_event_id, Deadline(run_id, None)))

    def wait(self, run_id: int, timeout: float | None = None) -> Run:
        """Block until the run is final and return it; TimeoutError after `timeout` seconds."""
        deadline = Deadline(run_id, timeout)
        try:
            for _event in self._follow(EventFollower(run_id, None, deadline)):
                pass
        except (FitserveAPIError, SSEError) as error:
            if not events_unavailable(error):
                raise
            poller = Poller(deadline)
            while not (run := self.get(run_id)).finished:
                time.sleep(poller.delay())
            return run
        return self.get(run_id)

    def _follow(self, follower: EventFollower) -> Iterator[Event]:
        while not follower.done:
            try:
                with self._transport.events(follower.request()) as messages:
                    for message in messages:
                        event = follower.accept(message)
                        if event is not None:
                            yield event
                        if follower.done:
                            return
                error = None
            except httpx.TransportError as caught:
                error = caught
            time.sleep(follower.retry_delay(error))


class Datasets:
    """Uploaded tables: `client.datasets`."""

    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport

    def upload(
        self,
        source: DataSource,
        *,
        target: str,
        name: str | None = None,
        features: Sequence[str] | None = None,
        missing: str | None = None,
        task: str | None = None,
        delimiter: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Dataset:
        """Upload a CSV/Parquet/JSON file by path, or a pyarrow Table or pandas DataFrame."""
        return self._transport.call(
            _api.upload_dataset(
                source,
                target=target,
                name=name,
                features=features,
                missing=missing,
                task=task,
                delimiter=delimiter,
                on_progress=on_progress,
            )
        )

    def builtin(self, name: str) -> Dataset:
        """Store a dataset shipped with fitserve (iris, friedman1)."""
        return self._transport.call(_api.store_builtin(name))

    def get(self, dataset_id: int) -> Dataset:
        """One dataset with its schema, statistics and preview."""
        return self._transport.call(_api.get_dataset(dataset_id))

    def list(self, *, limit: int | None = None) -> Iterator[DatasetSummary]:
        """Datasets, newest first, across pages, up to `limit` (None: all)."""
        pager = Pager(_api.dataset_page, {}, limit)
        while (call := pager.next_call()) is not None:
            yield from pager.take(self._transport.call(call))

    def delete(self, dataset_id: int, *, force: bool = False) -> None:
        """Delete a dataset; `force` even while runs refer to it."""
        self._transport.call(_api.delete_dataset(dataset_id, force))


class Models:
    """The model registry: `client.models`."""

    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport

    def register(self, name: str, run_id: int) -> ModelVersion:
        """Register a succeeded run as the next version of `name`."""
        return self._transport.call(_api.register_model(name, run_id))

    def list(self) -> builtins.list[ModelSummary]:
        """Every model with its latest version and aliases."""
        return self._transport.call(_api.list_models())

    def get(self, name: str) -> Model:
        """A model with its versions and aliases."""
        return self._transport.call(_api.get_model(name))

    def delete(self, name: str) -> None:
        """Forget a model and its versions; its runs stay."""
        self._transport.call(_api.delete_model(name))

    def set_alias(self, name: str, alias: str, version: int) -> Alias:
        """Point `alias` at a version of `name`."""
        return self._transport.call(_api.set_alias(name, alias, version))

    def delete_alias(self, name: str, alias: str) -> None:
        """Drop an alias."""
        self._transport.call(_api.delete_alias(name, alias))


class Sweeps:
    """Hyperparameter sweeps: `client.sweeps`."""

    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport

    def create(self, spec: SpecSource) -> Sweep:
        """Start a sweep (`POST /sweeps`); `spec` is the body, or a JSON or YAML file."""
        return self._transport.call(_api.create_sweep(spec))

    def get(self, sweep_id: int) -> Sweep:
        """One sweep with its trials."""
        return self._transport.call(_api.get_sweep(sweep_id))

    def list(self, *, limit: int | None = None) -> Iterator[Sweep]:
        """Sweeps, newest first, across pages (without their trials)."""
        pager = Pager(_api.sweep_page, {}, limit)
        while (call := pager.next_call()) is not None:
            yield from pager.take(self._transport.call(call))

    def cancel(self, sweep_id: int) -> Sweep:
        """Stop a sweep; its queued and running trials are cancelled."""
        return self._transport.call(_api.cancel_sweep(sweep_id))

    def wait(self, sweep_id: int, timeout: float | None = None) -> Sweep:
        """Poll until the sweep has ended and return it; TimeoutError after `timeout` s."""
        poller = Poller(Deadline(sweep_id, timeout, kind="sweep"))
        while not (sweep := self.get(sweep_id)).finished:
            time.sleep(poller.delay())
        return sweep


class Client:
    """The fitserve API over HTTP, blocking. Use as a context manager, or call `close`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._transport = SyncTransport(url, key, timeout)
        self.runs = Runs(self._transport)
        self.sweeps = Sweeps(self._transport)
        self.datasets = Datasets(self._transport)
        self.models = Models(self._transport)

    def predict(
        self,
        model: str | None = None,
        *,
        run_id: int | None = None,
        inputs: Sequence[Sequence[float]] | None = None,
        records: Sequence[Mapping[str, float]] | None = None,
    ) -> Prediction:
        """Predict with a model (`name`, `name@alias`, `name:3`) or a run's weights."""
        return self._transport.call(_api.predict(model, run_id, inputs, records))

    def predict_csv(
        self, source: CsvSource, model: str | None = None, *, run_id: int | None = None
    ) -> Prediction:
        """Predict the rows of a CSV (bytes or a path) whose header names the features."""
        return self._transport.call(_api.predict_csv(model, run_id, source))

    def close(self) -> None:
        """Close the connections."""
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRuns:
    """Training runs: `client.runs` of an AsyncClient."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def create(self, spec: SpecSource, *, idempotency_key: str | None = None) -> Run:
        """Queue a run from a spec mapping or a JSON/YAML file."""
        return await self._transport.call(_api.create_run(spec, idempotency_key))

    async def get(self, run_id: int) -> Run:
        """One run."""
        return await self._transport.call(_api.get_run(run_id))

    async def list(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Run]:
        """Runs, newest first (or by `sort`), across pages, up to `limit` (None: all)."""
        pager = Pager(_api.run_page, _run_filters(status, name, tag, sort), limit)
        while (call := pager.next_call()) is not None:
            for run in pager.take(await self._transport.call(call)):
                yield run

    async def epochs(self, run_id: int) -> builtins.list[Epoch]:
        """One row per finished epoch."""
        return await self._transport.call(_api.run_epochs(run_id))

    async def cancel(self, run_id: int) -> Run:
        """Cancel a queued run, or stop a running one at its next batch."""
        return await self._transport.call(_api.cancel_run(run_id))

    async def resume(self, run_id: int, epochs: int | None = None) -> Run:
        """Continue a cancelled or failed run from its checkpoint, optionally to more epochs."""
        return await self._transport.call(_api.resume_run(run_id, epochs))

    async def delete(self, run_id: int) -> None:
        """Delete a run that is not executing, with its epochs and weights."""
        await self._transport.call(_api.delete_run(run_id))

    async def compare(self, run_ids: Sequence[int]) -> Comparison:
        """Runs side by side with the spec paths where they differ."""
        return await self._transport.call(_api.compare_runs(run_ids))

    async def weights(self, run_id: int) -> Weights:
        """The learned weights as named tensors."""
        return await self._transport.call(_api.run_weights(run_id))

    async def weights_file(self, run_id: int) -> bytes:
        """The learned weights as a safetensors file."""
        return await self._transport.call(_api.run_weights_file(run_id))

    def events(self, run_id: int, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """The run's events from the start (or after `last_event_id`) until it finishes."""
        return self._follow(EventFollower(run_id, last_event_id, Deadline(run_id, None)))

    async def wait(self, run_id: int, timeout: float | None = None) -> Run:
        """Wait until the run is final and return it; TimeoutError after `timeout` seconds."""
        deadline = Deadline(run_id, timeout)
        try:
            async for _event in self._follow(EventFollower(run_id, None, deadline)):
                pass
        except (FitserveAPIError, SSEError) as error:
            if not events_unavailable(error):
                raise
            poller = Poller(deadline)
            while not (run := await self.get(run_id)).finished:
                await asyncio.sleep(poller.delay())
            return run
        return await self.get(run_id)

    async def _follow(self, follower: EventFollower) -> AsyncIterator[Event]:
        while not follower.done:
            try:
                async with self._transport.events(follower.request()) as messages:
                    async for message in messages:
                        event = follower.accept(message)
                        if event is not None:
                            yield event
                        if follower.done:
                            return
                error = None
            except httpx.TransportError as caught:
                error = caught
            await asyncio.sleep(follower.retry_delay(error))


class AsyncDatasets:
    """Uploaded tables: `client.datasets` of an AsyncClient."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def upload(
        self,
        source: DataSource,
        *,
        target: str,
        name: str | None = None,
        features: Sequence[str] | None = None,
        missing: str | None = None,
        task: str | None = None,
        delimiter: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Dataset:
        """Upload a CSV/Parquet/JSON file by path, or a pyarrow Table or pandas DataFrame."""
        call = _api.upload_dataset(
            source,
            target=target,
            name=name,
            features=features,
            missing=missing,
            task=task,
            delimiter=delimiter,
            on_progress=on_progress,
        )
        return await self._transport.call(call)

    async def builtin(self, name: str) -> Dataset:
        """Store a dataset shipped with fitserve (iris, friedman1)."""
        return await self._transport.call(_api.store_builtin(name))

    async def get(self, dataset_id: int) -> Dataset:
        """One dataset with its schema, statistics and preview."""
        return await self._transport.call(_api.get_dataset(dataset_id))

    async def list(self, *, limit: int | None = None) -> AsyncIterator[DatasetSummary]:
        """Datasets, newest first, across pages, up to `limit` (None: all)."""
        pager = Pager(_api.dataset_page, {}, limit)
        while (call := pager.next_call()) is not None:
            for dataset in pager.take(await self._transport.call(call)):
                yield dataset

    async def delete(self, dataset_id: int, *, force: bool = False) -> None:
        """Delete a dataset; `force` even while runs refer to it."""
        await self._transport.call(_api.delete_dataset(dataset_id, force))


class AsyncModels:
    """The model registry: `client.models` of an AsyncClient."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def register(self, name: str, run_id: int) -> ModelVersion:
        """Register a succeeded run as the next version of `name`."""
        return await self._transport.call(_api.register_model(name, run_id))

    async def list(self) -> builtins.list[ModelSummary]:
        """Every model with its latest version and aliases."""
        return await self._transport.call(_api.list_models())

    async def get(self, name: str) -> Model:
        """A model with its versions and aliases."""
        return await self._transport.call(_api.get_model(name))

    async def delete(self, name: str) -> None:
        """Forget a model and its versions; its runs stay."""
        await self._transport.call(_api.delete_model(name))

    async def set_alias(self, name: str, alias: str, version: int) -> Alias:
        """Point `alias` at a version of `name`."""
        return await self._transport.call(_api.set_alias(name, alias, version))

    async def delete_alias(self, name: str, alias: str) -> None:
        """Drop an alias."""
        await self._transport.call(_api.delete_alias(name, alias))


class AsyncSweeps:
    """Hyperparameter sweeps: `client.sweeps`, for asyncio."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def create(self, spec: SpecSource) -> Sweep:
        """Start a sweep (`POST /sweeps`); `spec` is the body, or a JSON or YAML file."""
        return await self._transport.call(_api.create_sweep(spec))

    async def get(self, sweep_id: int) -> Sweep:
        """One sweep with its trials."""
        return await self._transport.call(_api.get_sweep(sweep_id))

    async def list(self, *, limit: int | None = None) -> AsyncIterator[Sweep]:
        """Sweeps, newest first, across pages (without their trials)."""
        pager = Pager(_api.sweep_page, {}, limit)
        while (call := pager.next_call()) is not None:
            for sweep in pager.take(await self._transport.call(call)):
                yield sweep

    async def cancel(self, sweep_id: int) -> Sweep:
        """Stop a sweep; its queued and running trials are cancelled."""
        return await self._transport.call(_api.cancel_sweep(sweep_id))

    async def wait(self, sweep_id: int, timeout: float | None = None) -> Sweep:
        """Poll until the sweep has ended and return it; TimeoutError after `timeout` s."""
        poller = Poller(Deadline(sweep_id, timeout, kind="sweep"))
        while not (sweep := await self.get(sweep_id)).finished:
            await asyncio.sleep(poller.delay())
        return sweep


class AsyncClient:
    """The fitserve API over HTTP, for asyncio. Use as an async context manager."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._transport = AsyncTransport(url, key, timeout)
        self.runs = AsyncRuns(self._transport)
        self.sweeps = AsyncSweeps(self._transport)
        self.datasets = AsyncDatasets(self._transport)
        self.models = AsyncModels(self._transport)

    async def predict(
        self,
        model: str | None = None,
        *,
        run_id: int | None = None,
        inputs: Sequence[Sequence[float]] | None = None,
        records: Sequence[Mapping[str, float]] | None = None,
    ) -> Prediction:
        """Predict with a model (`name`, `name@alias`, `name:3`) or a run's weights."""
        return await self._transport.call(_api.predict(model, run_id, inputs, records))

    async def predict_csv(
        self, source: CsvSource, model: str | None = None, *, run_id: int | None = None
    ) -> Prediction:
        """Predict the rows of a CSV (bytes or a path) whose header names the features."""
        return await self._transport.call(_api.predict_csv(model, run_id, source))

    async def close(self) -> None:
        """Close the connections."""
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self.close()
