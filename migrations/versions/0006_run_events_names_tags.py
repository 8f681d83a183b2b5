"""Run events for live streams; run names and tags for search.

- `run_events`: one row per status a run enters and per epoch it commits, written by
  triggers in the same transaction as the change, so no code path can change a run without
  its event and a stream resumed from an event id loses nothing. On PostgreSQL each event is
  also NOTIFYed on `fitserve_events` with its project (delivered at commit).
- `runs.name` and `run_tags`, for `GET /runs?name=&tag=`.

Runs that existed before this revision get one event for their present status. On SQLite
the triggers live on `runs`: a later revision that rebuilds that table in batch mode must
create them again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 18:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.database import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSTGRESQL_UP = (
    # Event ids come from a sequence, so two transactions could commit them out of order and
    # a reader past the later id would never see the earlier. Taking the project's lock
    # before the id makes a project's events commit in id order; streams read one project.
    """
    CREATE FUNCTION fitserve_add_run_event(
        event_run_id integer, event_project text, event_kind text, event_status text,
        event_epoch integer, event_epoch_id integer
    ) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('fitserve_events'), hashtext(event_project));
        INSERT INTO run_events (run_id, project, kind, status, epoch, epoch_id, created_at)
        VALUES (
            event_run_id, event_project, event_kind, event_status, event_epoch, event_epoch_id,
            now()
        );
        PERFORM pg_notify('fitserve_events', event_project);
    END
    $$
    """,
    """
    CREATE FUNCTION fitserve_run_status_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- UPDATE OF fires whenever the column is assigned, even to the value it had.
        IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
            PERFORM fitserve_add_run_event(
                NEW.id, NEW.project, 'status', NEW.status, NEW.epochs_done, NULL
            );
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER runs_status_event AFTER INSERT OR UPDATE OF status ON runs
    FOR EACH ROW EXECUTE FUNCTION fitserve_run_status_event()
    """,
    """
    CREATE FUNCTION fitserve_epoch_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM fitserve_add_run_event(
            NEW.run_id, (SELECT project FROM runs WHERE id = NEW.run_id), 'epoch', NULL,
            NEW.epoch, NEW.id
        );
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER epochs_event AFTER INSERT ON epochs
    FOR EACH ROW EXECUTE FUNCTION fitserve_epoch_event()
    """,
)
POSTGRESQL_DOWN = (
    "DROP TRIGGER epochs_event ON epochs",
    "DROP FUNCTION fitserve_epoch_event()",
    "DROP TRIGGER runs_status_event ON runs",
    "DROP FUNCTION fitserve_run_status_event()",
    "DROP FUNCTION fitserve_add_run_event(integer, text, text, text, integer, integer)",
)
# SQLite stores UTCDateTime as SQLAlchemy writes a naive UTC datetime.
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
SQLITE_UP = (
    f"""
    CREATE TRIGGER runs_status_event_insert AFTER INSERT ON runs
    BEGIN
        INSERT INTO run_events (run_id, project, kind, status, epoch, epoch_id, created_at)
        VALUES (NEW.id, NEW.project, 'status', NEW.status, NEW.epochs_done, NULL, {SQLITE_NOW});
    END
    """,
    f"""
    CREATE TRIGGER runs_status_event_update AFTER UPDATE OF status ON runs
    WHEN OLD.status IS NOT NEW.status
    BEGIN
        INSERT INTO run_events (run_id, project, kind, status, epoch, epoch_id, created_at)
        VALUES (NEW.id, NEW.project, 'status', NEW.status, NEW.epochs_done, NULL, {SQLITE_NOW});
    END
    """,
    f"""
    CREATE TRIGGER epochs_event AFTER INSERT ON epochs
    BEGIN
        INSERT INTO run_events (run_id, project, kind, status, epoch, epoch_id, created_at)
        SELECT NEW.run_id, runs.project, 'epoch', NULL, NEW.epoch, NEW.id, {SQLITE_NOW}
        FROM runs WHERE runs.id = NEW.run_id;
    END
    """,
)
SQLITE_DOWN = (
    "DROP TRIGGER epochs_event",
    "DROP TRIGGER runs_status_event_update",
    "DROP TRIGGER runs_status_event_insert",
)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("epoch_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_events_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_run_events_run_id_id", "run_events", ["run_id", "id"])
    op.create_index("ix_run_events_project_id", "run_events", ["project", "id"])
    op.create_table(
        "run_tags",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_tags_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "tag", name=op.f("pk_run_tags")),
    )
    op.create_index("ix_run_tags_tag_run_id", "run_tags", ["tag", "run_id"])
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch_op.create_index("ix_runs_project_name", ["project", "name"])
    op.execute(
        "INSERT INTO run_events (run_id, project, kind, status, epoch, created_at) "
        "SELECT id, project, 'status', status, epochs_done, created_at FROM runs ORDER BY id"
    )
    for statement in POSTGRESQL_UP if postgresql else SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRESQL_DOWN:
            op.execute(statement)
    else:
        for statement in SQLITE_DOWN:
            op.execute(statement)
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.drop_index("ix_runs_project_name")
        batch_op.drop_column("name")
    op.drop_index("ix_run_tags_tag_run_id", table_name="run_tags")
    op.drop_table("run_tags")
    op.drop_index("ix_run_events_project_id", table_name="run_events")
    op.drop_index("ix_run_events_run_id_id", table_name="run_events")
    op.drop_table("run_events")
