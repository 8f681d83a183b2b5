"""The run event streams' reads: a project's (or one run's) events after an id, as a stream
sends them, and the newest id. The table (`runs.models.RunEvent`) is written by database
triggers (migration 0006), in the transaction of each change it records."""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.runs.models import Epoch, EventKind, Run, RunEvent, RunStatus


@dataclass(frozen=True)
class StreamEvent:
    """A run event as a stream sends it."""

    id: int
    run_id: int
    kind: EventKind
    data: dict[str, Any]


def events_after(
    *, session: Session, project: str, after_id: int, run_id: int | None = None, limit: int = 500
) -> list[StreamEvent]:
    """The project's (or one run's) events after an event id, oldest first.

    An epoch event whose row a resumed attempt has since dropped is left out: the attempt
    writes that epoch again, with an event of its own.
    """
    query = (
        select(RunEvent, Epoch, Run)
        .join(Run, Run.id == RunEvent.run_id)
        .outerjoin(Epoch, Epoch.id == RunEvent.epoch_id)
        .where(RunEvent.project == project, RunEvent.id > after_id)
        .order_by(RunEvent.id)
        .limit(limit)
    )
    if run_id is not None:
        query = query.where(RunEvent.run_id == run_id)
    events = []
    data: dict[str, Any]
    for event, epoch, run in session.execute(query):
        if event.kind == EventKind.EPOCH:
            if epoch is None:
                continue
            data = {
                "run_id": run.id,
                "epoch": epoch.epoch,
                "train_loss": epoch.train_loss,
                "val_loss": epoch.val_loss,
                "metrics": epoch.metrics,
                "seconds": epoch.seconds,
                "attempt": epoch.attempt,
            }
        else:
            data = {
                "run_id": run.id,
                "status": event.status,
                "progress": {"epoch": event.epoch, "epochs": run.epochs_total},
            }
            if event.status == RunStatus.FAILED and run.status == RunStatus.FAILED:
                data |= {"failure_kind": run.failure_kind, "error": run.error}
        events.append(
            StreamEvent(id=event.id, run_id=run.id, kind=EventKind(event.kind), data=data)
        )
    return events


def newest_event_id(*, session: Session, project: str) -> int:
    """The id of the project's newest run event (0: none yet)."""
    return session.scalar(select(func.max(RunEvent.id)).where(RunEvent.project == project)) or 0
