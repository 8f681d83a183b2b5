"""The stored form of a dataset: written once, mapped by workers without a copy."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from app.datasets.tables import map_table_file, read_table_file, sample_table_file, write_table_file

TABLE = pa.table(
    {
        "a": pa.array([1, 2, 3, 4], pa.float32()),
        "b": pa.array([5, 6, 7, 8], pa.float32()),
        "label": ["x", "y", "x", "y"],
    }
)


def test_a_mapped_table_is_the_row_major_matrix_and_the_target(tmp_path: Path):
    path = tmp_path / "table.arrow"
    write_table_file(TABLE, features=["a", "b"], target="label", path=path)
    mapped = map_table_file(path)
    assert mapped.features.tolist() == [[1, 5], [2, 6], [3, 7], [4, 8]]
    assert mapped.features.flags.c_contiguous and mapped.features.dtype == np.float32
    assert (mapped.feature_names, mapped.target_name) == (["a", "b"], "label")
    assert mapped.target.to_pylist() == ["x", "y", "x", "y"]
    # Copy-on-write: torch takes it without a read-only warning, and writes stay private.
    features = torch.from_numpy(mapped.features)
    features[0, 0] = 99
    assert map_table_file(path).features[0, 0] == 1
    assert read_table_file(path).equals(TABLE)


def test_a_sample_takes_evenly_spaced_rows(tmp_path: Path):
    path = tmp_path / "table.arrow"
    write_table_file(TABLE, features=["b", "a"], target="label", path=path)
    sample = sample_table_file(path, rows=2)
    assert sample.column_names == ["b", "a", "label"]
    assert sample.column("a").to_pylist() == [1, 3]
    assert sample.column("label").to_pylist() == ["x", "x"]
