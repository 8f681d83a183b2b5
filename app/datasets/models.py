"""The datasets table: metadata as JSON; the rows are an Arrow IPC file in the artifact store."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.artifacts.models import Artifact
from app.database import Base, UTCDateTime, utcnow


class Dataset(Base):
    """An uploaded dataset: checked feature columns (float32) and the target as uploaded."""

    __tablename__ = "datasets"
    # Runs name datasets by id, so an id must never come back for another dataset.
    __table_args__ = (
        # Per project: the same upload in another project is that project's own dataset.
        UniqueConstraint("project", "fingerprint"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    # sha256 of the uploaded bytes; the fingerprint adds the options, so the same file read
    # with another target is another dataset while an identical upload is found again.
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    task: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(255))
    features: Mapped[list[str]] = mapped_column(JSON)
    missing: Mapped[str] = mapped_column(String(16))
    n_rows: Mapped[int]
    columns: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    preview: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # The stored table (`tables.write_table_file`); RESTRICT keeps its object while named.
    artifact_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"), index=True)
    artifact: Mapped[Artifact] = relationship(lazy="joined")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
