"""Executors: which executor (local workers or Ray) trained a run, and ran a worker row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both databases: a batch (copy-and-rename) of `runs` on SQLite would
# break the triggers that name it.
def upgrade() -> None:
    op.add_column("runs", sa.Column("executor", sa.String(length=16), nullable=True))
    op.add_column(
        "workers",
        sa.Column("executor", sa.String(length=16), nullable=False, server_default="local"),
    )


def downgrade() -> None:
    op.drop_column("workers", "executor")
    op.drop_column("runs", "executor")
