"""Projects own every run, dataset and model; API keys; an append-only audit log.

- `projects` with per-project quotas; the project `default` owns every existing row.
- `project` on runs, datasets and registered models; idempotency keys, dataset
  fingerprints and model names become unique per project instead of globally.
- `api_keys`: the sha256 of each key's secret, looked up by its public prefix.
- `audit_events`, which triggers keep append-only on both databases.

Downgrading fails if two projects have since used the same model name, fingerprint or
idempotency key: the global uniqueness it restores would not hold.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.database import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_PROJECT = "default"
# Table, the column that was unique alone and becomes unique within a project.
SCOPED = (
    ("runs", "idempotency_key"),
    ("datasets", "fingerprint"),
    ("registered_models", "name"),
)
APPEND_ONLY_POSTGRESQL = (
    """
    CREATE FUNCTION fitserve_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_events is append-only';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION fitserve_audit_append_only()
    """,
    # Row triggers do not fire on TRUNCATE.
    """
    CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION fitserve_audit_append_only()
    """,
)
APPEND_ONLY_SQLITE = tuple(
    f"""
    CREATE TRIGGER audit_events_no_{operation.lower()} BEFORE {operation} ON audit_events
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END
    """
    for operation in ("UPDATE", "DELETE")
)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "projects",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("max_queued_runs", sa.Integer(), nullable=True),
        sa.Column("max_running_runs", sa.Integer(), nullable=True),
        sa.Column("max_dataset_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_rows_x_epochs", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_projects")),
    )
    projects = sa.table("projects", sa.column("name"), sa.column("created_at", UTCDateTime()))
    op.execute(projects.insert().values(name=DEFAULT_PROJECT, created_at=sa.func.now()))
    for table, column in SCOPED:
        kwargs = (
            {"table_kwargs": {"sqlite_autoincrement": True}} if table != "registered_models" else {}
        )
        # The server default fills existing rows and is dropped at once: code names the project.
        with op.batch_alter_table(table, **kwargs) as batch_op:
            batch_op.add_column(
                sa.Column(
                    "project", sa.String(length=64), nullable=False, server_default=DEFAULT_PROJECT
                )
            )
        with op.batch_alter_table(table, **kwargs) as batch_op:
            batch_op.alter_column("project", server_default=None)
            batch_op.create_foreign_key(
                op.f(f"fk_{table}_project_projects"), "projects", ["project"], ["name"]
            )
            batch_op.create_index(op.f(f"ix_{table}_project"), ["project"])
            batch_op.drop_constraint(op.f(f"uq_{table}_{column}"), type_="unique")
            batch_op.create_unique_constraint(
                op.f(f"uq_{table}_project_{column}"), ["project", column]
            )
    op.create_index("ix_runs_project_status", "runs", ["project", "status"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project"], ["projects.name"], name=op.f("fk_api_keys_project_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_api_keys_project"), "api_keys", ["project"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("object_type", sa.String(length=32), nullable=False),
        sa.Column("object_id", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_events_project_id", "audit_events", ["project", "id"])
    for statement in APPEND_ONLY_POSTGRESQL if postgresql else APPEND_ONLY_SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION fitserve_audit_append_only()")
    op.drop_index("ix_audit_events_project_id", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index("ix_runs_project_status", table_name="runs")
    op.drop_index(op.f("ix_api_keys_project"), table_name="api_keys")
    op.drop_table("api_keys")
    for table, column in SCOPED:
        kwargs = (
            {"table_kwargs": {"sqlite_autoincrement": True}} if table != "registered_models" else {}
        )
        with op.batch_alter_table(table, **kwargs) as batch_op:
            batch_op.drop_constraint(op.f(f"uq_{table}_project_{column}"), type_="unique")
            batch_op.create_unique_constraint(op.f(f"uq_{table}_{column}"), [column])
            batch_op.drop_index(op.f(f"ix_{table}_project"))
            batch_op.drop_constraint(op.f(f"fk_{table}_project_projects"), type_="foreignkey")
            batch_op.drop_column("project")
    op.drop_table("projects")
