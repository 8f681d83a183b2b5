"""The audit_events table: one row per write, which the database refuses to change or delete."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, UTCDateTime, utcnow


class AuditEvent(Base):
    """Who (key, project, address) did what (action) to which object, and when."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_project_id", "project", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # No foreign keys: the record outlives whatever it names.
    project: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[int | None]
    address: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
