"""The audit log over HTTP, for admins."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.access import AdminAccess
from app.audit import service
from app.audit.schemas import AuditEventRead, AuditPage
from app.dependencies import ReadSessionDep
from app.error_handlers import ERROR_RESPONSES
from app.ids import Id
from app.principal import ProjectName

router = APIRouter(prefix="/audit", tags=["audit"], responses=ERROR_RESPONSES)


@router.get("")
def list_audit_events(
    session: ReadSessionDep,
    _principal: AdminAccess,
    project: Annotated[ProjectName | None, Query(description="Only this project's.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[Id | None, Query(description="next_cursor of a page")] = None,
) -> AuditPage:
    """Every write, newest first, one page at a time."""
    events, next_id = service.list_events(
        session=session, project=project, limit=limit, before_id=cursor
    )
    return AuditPage(
        items=[AuditEventRead.model_validate(event) for event in events],
        next_cursor=str(next_id) if next_id is not None else None,
    )
