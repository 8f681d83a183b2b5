"""Health and worker status."""

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, text

from app.access import AdminAccess
from app.dependencies import ReadSessionDep
from app.error_handlers import ERROR_RESPONSES
from app.worker.models import WorkerRecord

router = APIRouter(tags=["system"], responses=ERROR_RESPONSES)


class Health(BaseModel):
    """Whether the API can reach its database; open to all, so it says nothing more."""

    status: str


class WorkerRead(BaseModel):
    """A worker process and what it is doing."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    pid: int = Field(description="The worker's process id; 0 for a Ray node.")
    host: str
    device: str
    executor: str = Field(description="`local` (a worker process) or `ray` (a Ray node).")
    current_run_id: int | None
    started_at: datetime
    heartbeat_at: datetime


@router.get("/healthz")
def healthz(session: ReadSessionDep) -> Health:
    """Liveness and database reachability."""
    session.execute(text("SELECT 1"))
    return Health(status="ok")


@router.get("/workers")
def list_workers(session: ReadSessionDep, _principal: AdminAccess) -> list[WorkerRead]:
    """Workers that have not stopped, with their device, current run and last heartbeat."""
    records = session.scalars(
        select(WorkerRecord).where(WorkerRecord.stopped_at.is_(None)).order_by(WorkerRecord.id)
    ).all()
    return [WorkerRead.model_validate(record) for record in records]
