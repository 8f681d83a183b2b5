"""The artifacts table: one row per stored object, which datasets, checkpoints and weights name."""

from datetime import datetime

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, UTCDateTime, utcnow


class Artifact(Base):
    """An object in the artifact store, content-addressed by its sha256.

    Rows that use an object refer to this row by foreign key (RESTRICT), so the database
    itself refuses to forget an object something still names.
    """

    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
