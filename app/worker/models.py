"""The workers table: who is alive, on which device, running what."""

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, UTCDateTime, utcnow


class WorkerRecord(Base):
    """One worker process, kept current by its heartbeat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    pid: Mapped[int]
    host: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(32))
    # `local`: a worker process of a pool; `ray`: a node of the Ray cluster.
    executor: Mapped[str] = mapped_column(String(16), default="local", server_default="local")
    current_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
