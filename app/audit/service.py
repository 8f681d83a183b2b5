"""Write and read the audit log; every write flow records one event in its own transaction."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.models import AuditEvent
from app.pagination import newest_first
from app.principal import Principal


def record(
    *,
    session: Session,
    principal: Principal,
    action: str,
    object_id: int | str,
    **detail: Any,
) -> None:
    """Add an event for `action` (`<object type>.<verb>`); it commits with its write, or not."""
    session.add(
        AuditEvent(
            project=principal.project,
            key_id=principal.key_id,
            address=principal.address,
            action=action,
            object_type=action.partition(".")[0],
            object_id=str(object_id),
            detail=detail or None,
        )
    )


def list_events(
    *, session: Session, project: str | None, limit: int, before_id: int | None
) -> tuple[Sequence[AuditEvent], int | None]:
    """A page of events, newest first, of one project or of all."""
    query = select(AuditEvent)
    if project is not None:
        query = query.where(AuditEvent.project == project)
    return newest_first(
        session=session, query=query, id_column=AuditEvent.id, limit=limit, before_id=before_id
    )
