"""The projects table: every run, dataset, model and key belongs to one, with its quotas."""

from datetime import datetime

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, UTCDateTime, utcnow


class Project(Base):
    """A team's space; a null quota is no limit."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_queued_runs: Mapped[int | None]
    max_running_runs: Mapped[int | None]
    max_dataset_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_rows_x_epochs: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
