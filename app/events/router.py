"""Server-Sent Event streams: one run's events, or every run's in the caller's project."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.access import TrainAccess
from app.config import Settings
from app.dependencies import DatabaseDep, SettingsDep
from app.error_handlers import ERROR_RESPONSES
from app.events import service
from app.events.broker import EventBroker
from app.ids import Id
from app.runs import service as runs
from app.runs.models import FINAL_STATUSES, EventKind

router = APIRouter(tags=["events"], responses=ERROR_RESPONSES)

STREAM_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "`text/event-stream`: messages with `id`, `event` (`status` or "
        "`epoch`) and JSON `data`, and keep-alive comments while idle.",
        "content": {"text/event-stream": {}},
    }
}
SHUTDOWN_GRACE_SECONDS = 1.0
LastEventId = Annotated[
    Id | None,
    Header(
        alias="Last-Event-ID",
        description="Resume after this event id: nothing up to it is sent again.",
    ),
]


@router.get("/runs/{run_id}/events", response_class=EventSourceResponse, responses=STREAM_RESPONSES)
async def run_events(
    run_id: Id,
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    principal: TrainAccess,
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    """A run's statuses and epochs from the start (or after `Last-Event-ID`) as they commit.

    The stream ends after the run's final status (`succeeded`, `failed`, `cancelled`).
    """
    stream = EventStream(
        broker=request.app.state.event_broker,
        sessions=database.read_sessions,
        project=principal.project,
        run_id=run_id,
    )
    # A missing run is a 404 before the stream starts.
    await run_in_threadpool(stream.run_is_final)
    return _response(stream, after_id=last_event_id or 0, settings=settings)


@router.get("/events", response_class=EventSourceResponse, responses=STREAM_RESPONSES)
async def project_events(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    principal: TrainAccess,
    last_event_id: LastEventId = None,
    after: Annotated[
        Id | None,
        Query(
            description="Start after this event id when there is no `Last-Event-ID` (a "
            "browser's EventSource cannot send that header on its first request)."
        ),
    ] = None,
) -> EventSourceResponse:
    """Every run's events in the caller's project as they commit; the stream stays open.

    Without `Last-Event-ID` or `after` it starts with the next event; `after=0` replays all.
    """
    stream = EventStream(
        broker=request.app.state.event_broker,
        sessions=database.read_sessions,
        project=principal.project,
        run_id=None,
    )
    after_id = last_event_id if last_event_id is not None else after
    if after_id is None:
        after_id = await run_in_threadpool(stream.newest_id)
    return _response(stream, after_id=after_id, settings=settings)


def _response(stream: "EventStream", *, after_id: int, settings: Settings) -> EventSourceResponse:
    # On server shutdown the stream ends itself, so the response completes cleanly instead
    # of being cancelled halfway (which uvicorn logs as an error).
    shutdown = anyio.Event()
    return EventSourceResponse(
        stream.messages(
            after_id=after_id, shutdown=shutdown, idle_seconds=settings.events_keepalive_seconds
        ),
        ping=settings.events_keepalive_seconds,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


@dataclass(frozen=True)
class EventStream:
    """Reads one project's (or run's) events after the last one sent, when the broker wakes it."""

    broker: EventBroker
    sessions: sessionmaker[Session]
    project: str
    run_id: int | None
    batch: int = 500

    async def messages(
        self, *, after_id: int, shutdown: anyio.Event, idle_seconds: float
    ) -> AsyncIterator[ServerSentEvent]:
        """Every event after `after_id`, in order, each once; for a run, up to its end."""
        while not shutdown.is_set():
            generation = self.broker.generation
            events, ended = await run_in_threadpool(self._read, after_id)
            for event in events:
                yield ServerSentEvent(
                    data=json.dumps(event.data), event=event.kind, id=str(event.id)
                )
                after_id = event.id
            if ended:
                return
            if len(events) < self.batch:
                await self._wait(generation, shutdown, idle_seconds)

    async def _wait(self, generation: int, shutdown: anyio.Event, idle_seconds: float) -> None:
        async with anyio.create_task_group() as group:

            async def end_at_shutdown() -> None:
                await shutdown.wait()
                group.cancel_scope.cancel()

            group.start_soon(end_at_shutdown)
            await self.broker.wait(generation, idle_seconds)
            group.cancel_scope.cancel()

    def run_is_final(self) -> bool:
        """Whether the stream's run is in a final status; a 404 if it is gone."""
        assert self.run_id is not None
        with self.sessions() as session:
            run = runs.get_run(session=session, run_id=self.run_id, project=self.project)
            return run.status in FINAL_STATUSES

    def newest_id(self) -> int:
        """The id of the project's newest event (0: none yet)."""
        with self.sessions() as session:
            return service.newest_event_id(session=session, project=self.project)

    def _read(self, after_id: int) -> tuple[list[service.StreamEvent], bool]:
        # The status is read before the events: once it is final, its event has committed
        # and the read below includes it.
        try:
            final = self.run_id is not None and self.run_is_final()
        except runs.RunNotFoundError:
            # Deleted while streamed: its events went with it.
            return [], True
        with self.sessions() as session:
            events = service.events_after(
                session=session,
                project=self.project,
                run_id=self.run_id,
                after_id=after_id,
                limit=self.batch,
            )
        # A run resumed after the status was read has a newer event than its final one.
        last_is_final = not events or (
            events[-1].kind == EventKind.STATUS and events[-1].data["status"] in FINAL_STATUSES
        )
        return events, final and len(events) < self.batch and last_is_final
