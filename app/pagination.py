"""Keyset pagination by id, newest first, shared by every listing endpoint."""

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

Row = TypeVar("Row")


def newest_first(
    *,
    session: Session,
    query: Select[Row],
    id_column: InstrumentedAttribute[Any],
    limit: int,
    before_id: int | None,
) -> tuple[Sequence[Row], int | None]:
    """A page of rows with ids below `before_id`, and the id to continue before (None: last)."""
    query = query.order_by(id_column.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(id_column < before_id)
    rows = session.scalars(query).all()
    if len(rows) > limit:
        return rows[:limit], getattr(rows[limit - 1], id_column.key)
    return rows, None
