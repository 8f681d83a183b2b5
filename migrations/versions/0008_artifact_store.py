"""Artifacts: dataset tables, checkpoint tensors and weights move from blobs to the store.

Each blob is written to the artifact store (`FITSERVE_ARTIFACTS`) as a content-addressed
object, recorded in `artifacts`, and named by digest from its row. Dataset tables also change
form: from an Arrow IPC stream of columns to an IPC file whose features are one row-major
float32 matrix, which workers map. The downgrade reads every object back into its blob;
the objects stay in the store (remove the directory or prefix by hand).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 16:00:00.000000
"""

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import sqlalchemy as sa
from alembic import context, op

from app.artifacts.store import ArtifactStore, StagedObject, open_store
from app.config import Settings
from app.database import UTCDateTime
from app.datasets.tables import read_table_file, write_table_file

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DATASETS_KWARGS = {"table_kwargs": {"sqlite_autoincrement": True}}
# (table, key column, blob column, digest column)
BLOBS = (
    ("datasets", "id", "data", "artifact_sha256"),
    ("checkpoints", "run_id", "tensors", "tensors_sha256"),
    ("weights", "run_id", "data", "sha256"),
)


def _store() -> ArtifactStore:
    settings = context.config.attributes.get("settings") or Settings()
    return open_store(settings)


def _mapped_form(stream_bytes: bytes, features: list[str], target: str, path: Path) -> None:
    """Rewrite a dataset stored by 0002 (an IPC stream of columns) in the mapped form."""
    table = ipc.open_stream(pa.py_buffer(stream_bytes)).read_all()
    write_table_file(table, features=features, target=target, path=path)


def _column_stream(path: Path) -> bytes:
    """A mapped-form dataset back as 0002's IPC stream of columns."""
    table = read_table_file(path)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _record(connection: sa.Connection, store: ArtifactStore, staged: StagedObject) -> str:
    uri = store.publish(staged)
    artifacts = sa.table("artifacts", sa.column("sha256"), sa.column("uri"))
    found = connection.execute(
        sa.select(artifacts.c.sha256).where(artifacts.c.sha256 == staged.sha256)
    ).first()
    if found is None:
        connection.execute(
            sa.text(
                "INSERT INTO artifacts (sha256, uri, size_bytes, created_at) "
                "VALUES (:sha256, :uri, :size_bytes, CURRENT_TIMESTAMP)"
            ),
            {"sha256": staged.sha256, "uri": uri, "size_bytes": staged.size_bytes},
        )
    return staged.sha256


def _move_out(connection: sa.Connection, store: ArtifactStore) -> None:
    """Write each blob to the store, one row at a time, and name it by digest."""
    for table, key, blob, digest in BLOBS:
        keys = connection.execute(sa.text(f"SELECT {key} FROM {table} ORDER BY {key}")).scalars()
        for value in list(keys):
            row = connection.execute(
                sa.text(f"SELECT * FROM {table} WHERE {key} = :key"), {"key": value}
            ).one()
            data = bytes(getattr(row, blob))
            if table == "datasets":
                features = (
                    row.features if isinstance(row.features, list) else json.loads(row.features)
                )
                with store.staging_file() as path:
                    _mapped_form(data, features, row.target, path)
                    sha256 = _record(connection, store, store.stage(path))
            else:
                with store.staged_bytes(data) as staged:
                    sha256 = _record(connection, store, staged)
            connection.execute(
                sa.text(f"UPDATE {table} SET {digest} = :sha256 WHERE {key} = :key"),
                {"sha256": sha256, "key": value},
            )


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_artifacts")),
    )
    with op.batch_alter_table("datasets", **DATASETS_KWARGS) as batch_op:
        batch_op.add_column(sa.Column("artifact_sha256", sa.String(length=64), nullable=True))
        # Uploads may now pass 2 GiB.
        batch_op.alter_column("size_bytes", existing_type=sa.Integer(), type_=sa.BigInteger())
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.add_column(sa.Column("tensors_sha256", sa.String(length=64), nullable=True))
    _move_out(op.get_bind(), _store())
    for table, _key, blob, digest in BLOBS:
        with op.batch_alter_table(
            table, **(DATASETS_KWARGS if table == "datasets" else {})
        ) as batch_op:
            batch_op.drop_column(blob)
            batch_op.alter_column(digest, existing_type=sa.String(length=64), nullable=False)
            batch_op.create_foreign_key(
                op.f(f"fk_{table}_{digest}_artifacts"), "artifacts", [digest], ["sha256"]
            )
            batch_op.create_index(op.f(f"ix_{table}_{digest}"), [digest])


def downgrade() -> None:
    connection = op.get_bind()
    store = _store()
    for table, _key, blob, digest in BLOBS:
        with op.batch_alter_table(
            table, **(DATASETS_KWARGS if table == "datasets" else {})
        ) as batch_op:
            batch_op.drop_index(op.f(f"ix_{table}_{digest}"))
            batch_op.drop_constraint(op.f(f"fk_{table}_{digest}_artifacts"), type_="foreignkey")
            batch_op.add_column(sa.Column(blob, sa.LargeBinary(), nullable=True))
    for table, key, blob, digest in BLOBS:
        rows = connection.execute(
            sa.text(
                f"SELECT {table}.{key} AS key, artifacts.uri AS uri, artifacts.sha256 AS sha256 "
                f"FROM {table} "
                f"JOIN artifacts ON artifacts.sha256 = {table}.{digest} ORDER BY {table}.{key}"
            )
        ).all()
        for row in rows:
            if table == "datasets":
                data = _column_stream(store.local_path(row.uri, row.sha256))
            else:
                data = store.read_bytes(row.uri)
            connection.execute(
                sa.text(f"UPDATE {table} SET {blob} = :data WHERE {key} = :key"),
                {"data": data, "key": row.key},
            )
    for table, _key, blob, digest in BLOBS:
        with op.batch_alter_table(
            table, **(DATASETS_KWARGS if table == "datasets" else {})
        ) as batch_op:
            batch_op.alter_column(blob, existing_type=sa.LargeBinary(), nullable=False)
            if table != "weights":
                batch_op.drop_column(digest)
            if table == "datasets":
                batch_op.alter_column(
                    "size_bytes", existing_type=sa.BigInteger(), type_=sa.Integer()
                )
    op.drop_table("artifacts")
