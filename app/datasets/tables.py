"""The stored form of a dataset: an Arrow IPC file that a worker maps instead of decoding.

The features are one row-major float32 matrix (a fixed-size-list column, one list per row)
in a single record batch, so a mapped file is already the tensor a run trains on: no copy,
no parse. The target follows as its own column.
"""

import json
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

FEATURES_COLUMN = "features"
TARGET_COLUMN = "target"
FEATURE_NAMES_KEY = b"fitserve.features"
TARGET_NAME_KEY = b"fitserve.target"


@dataclass(frozen=True)
class MappedTable:
    """A stored table opened for training: its features map the file copy-on-write."""

    features: np.ndarray
    target: pa.Array
    feature_names: list[str]
    target_name: str


def write_table_file(table: pa.Table, *, features: list[str], target: str, path: Path) -> None:
    """Write an ingested table (float32 feature columns and a target) in the stored form."""
    matrix = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for position, name in enumerate(features):
        matrix[:, position] = table.column(name).to_numpy()
    rows = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), len(features))
    del matrix
    labels = table.column(target).combine_chunks()
    metadata = {FEATURE_NAMES_KEY: json.dumps(features).encode(), TARGET_NAME_KEY: target.encode()}
    schema = pa.schema(
        [(FEATURES_COLUMN, rows.type), (TARGET_COLUMN, labels.type)], metadata=metadata
    )
    batch = pa.RecordBatch.from_arrays([rows, labels], schema=schema)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
        writer.write_batch(batch)


def read_table_file(path: Path) -> pa.Table:
    """A stored table back as named columns: features then the target (for migrations, tests)."""
    mapped = map_table_file(path)
    return _named_columns(mapped, mapped.features, mapped.target)


def map_table_file(path: Path) -> MappedTable:
    """Map a stored table; the feature matrix is a writable copy-on-write view of the file.

    Copy-on-write, so the array may be handed to torch as writable (torch warns about
    read-only memory) while the file itself can never change.
    """
    with path.open("rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    buffer = pa.py_buffer(mapping)
    reader = ipc.open_file(pa.BufferReader(buffer))
    names = json.loads(reader.schema.metadata[FEATURE_NAMES_KEY])
    target_name = reader.schema.metadata[TARGET_NAME_KEY].decode()
    # `write_table_file` writes one batch, so the matrix is one contiguous buffer.
    batch = reader.get_batch(0)
    rows = batch.column(0)
    values = rows.values
    start = values.buffers()[1].address - buffer.address + values.offset * 4
    features = np.frombuffer(
        mapping, dtype=np.float32, count=len(rows) * len(names), offset=start
    ).reshape(len(rows), len(names))
    return MappedTable(
        features=features, target=batch.column(1), feature_names=names, target_name=target_name
    )


def sample_table_file(path: Path, *, rows: int) -> pa.Table:
    """At most `rows` evenly spaced rows of a stored table, as named columns (for charts)."""
    mapped = map_table_file(path)
    picked = np.arange(0, len(mapped.features), max(1, -(-len(mapped.features) // rows)))
    return _named_columns(mapped, mapped.features[picked], mapped.target.take(pa.array(picked)))


def _named_columns(mapped: MappedTable, matrix: np.ndarray, target: pa.Array) -> pa.Table:
    """Rows of a mapped table as one column per feature, then the target."""
    columns = {name: pa.array(matrix[:, i]) for i, name in enumerate(mapped.feature_names)}
    columns[mapped.target_name] = target
    return pa.table(columns)
