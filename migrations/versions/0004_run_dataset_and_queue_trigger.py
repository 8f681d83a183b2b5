"""Runs reference their stored dataset by foreign key; PostgreSQL announces queued runs.

- `runs.dataset_id` (ON DELETE SET NULL), backfilled from each run's spec.
- A trigger NOTIFYs `fitserve_runs` whenever a run becomes queued, whoever queued it, so
  no code path can queue a run without waking the listening workers.
- The test-only `chaos` field leaves the stored specs (fault injection left the API).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 13:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_NAME = "fk_runs_dataset_id_datasets"

NOTIFY_FUNCTION = """
CREATE FUNCTION fitserve_notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        PERFORM pg_notify('fitserve_runs', '');
    END IF;
    RETURN NULL;
END
$$
"""

NOTIFY_TRIGGER = """
CREATE TRIGGER runs_notify_queued AFTER INSERT OR UPDATE OF status ON runs
FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION fitserve_notify_queued()
"""


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    # SQLite adds a constraint by copying the table: run ids must stay never reused.
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("dataset_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            FK_NAME, "datasets", ["dataset_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.create_index(batch_op.f("ix_runs_dataset_id"), ["dataset_id"])
    if postgresql:
        op.execute(
            """
            UPDATE runs SET dataset_id = (spec -> 'dataset' ->> 'id')::integer
            WHERE spec -> 'dataset' ->> 'type' = 'dataset'
              AND EXISTS (
                SELECT 1 FROM datasets
                WHERE datasets.id = (runs.spec -> 'dataset' ->> 'id')::integer
              )
            """
        )
        op.execute(
            "UPDATE runs SET spec = (spec::jsonb - 'chaos')::json WHERE spec::jsonb ? 'chaos'"
        )
        op.execute(NOTIFY_FUNCTION)
        op.execute(NOTIFY_TRIGGER)
    else:
        op.execute(
            """
            UPDATE runs SET dataset_id = json_extract(spec, '$.dataset.id')
            WHERE json_extract(spec, '$.dataset.type') = 'dataset'
              AND EXISTS (
                SELECT 1 FROM datasets WHERE datasets.id = json_extract(runs.spec, '$.dataset.id')
              )
            """
        )
        op.execute(
            "UPDATE runs SET spec = json_remove(spec, '$.chaos') "
            "WHERE json_type(spec, '$.chaos') IS NOT NULL"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER runs_notify_queued ON runs")
        op.execute("DROP FUNCTION fitserve_notify_queued()")
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_dataset_id"))
        batch_op.drop_constraint(FK_NAME, type_="foreignkey")
        batch_op.drop_column("dataset_id")
