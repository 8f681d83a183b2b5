"""The audit log over HTTP, for admins."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.access import AdminAccess
from app.audit import service
from app.audit.schemas import AuditEventRead, AuditPage
from app.dependencies import ReadSessionDep
from app.principal import ProjectName

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def list_audit_events(
    session: ReadSessionDep,
    _principal: AdminAccess,
    project: Annotated[ProjectName | None, Query(description="Only this project's.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=r"^\d+$", max_length=18, description="next_cursor of a page")
    ] = None,
) -> AuditPage:
    """Every write, newest first, one page at a time."""
    events, next_id = service.list_events(
        session=session, project=project, limit=limit, before_id=int(cursor) if cursor else None
    )
    return AuditPage(
        items=[AuditEventRead.model_validate(event) for event in events],
        next_cursor=str(next_id) if next_id is not None else None,
    )
