"""What the audit endpoint returns."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEventRead(BaseModel):
    """One write: who, from where, what, to which object, when."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    project: str
    key_id: int | None
    address: str | None
    action: str
    object_type: str
    object_id: str
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    """A page of events, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[AuditEventRead]
    next_cursor: str | None
