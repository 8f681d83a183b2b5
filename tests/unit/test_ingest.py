"""Parsing and checking uploads with pyarrow, without the API around it."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.config import Limits
from app.datasets.ingest import (
    DatasetInputError,
    IngestOptions,
    from_ipc,
    ingest_columns,
    ingest_file,
    records_to_columns,
    to_ipc,
)

LIMITS = Limits()


def ingest(data: bytes, limits: Limits = LIMITS, **options):
    return ingest_file(io.BytesIO(data), options=IngestOptions(**options), limits=limits)


def refused(data: bytes, limits: Limits = LIMITS, **options) -> str:
    with pytest.raises(DatasetInputError) as error:
        ingest(data, limits, **options)
    return str(error.value)


@pytest.mark.parametrize(
    "data",
    [
        b"a,b,y\n1,2,x\n3,4,z\n",
        b"\xef\xbb\xbfa;b;y\r\n1;2;x\r\n3;4;z\r\n",
        b"a\tb\ty\n1\t2\tx\n3\t4\tz\n",
    ],
    ids=["comma", "semicolon-bom-crlf", "tab"],
)
def test_delimiters_and_bom_are_detected(data: bytes):
    result = ingest(data, target="y")
    assert result.features == ["a", "b"]
    assert result.task == "classification"
    assert result.table.column("a").to_pylist() == [1.0, 3.0]
    assert result.stats["y"]["classes"] == [["x", 1], ["z", 1]]
    assert from_ipc(to_ipc(result.table)).equals(result.table)


def test_stats_preview_and_feature_order():
    data = b"x1,x2,y\n" + b"".join(b"%d,%d,%d\n" % (i, 10 - i, 2 * i) for i in range(20))
    result = ingest(data, target="y", features=["x2", "x1"])
    assert result.features == ["x2", "x1"]
    assert result.task == "regression"
    assert result.stats["x1"] == {
        "min": 0.0,
        "max": 19.0,
        "mean": 9.5,
        "std": pytest.approx(5.766, abs=1e-3),
        "missing": 0,
    }
    assert len(result.preview) == 10
    assert result.preview[0] == {"x2": 10.0, "x1": 0.0, "y": 0}


@pytest.mark.parametrize(
    ("data", "options", "fragment"),
    [
        (b"", {}, "the file is empty"),
        (b"a,y\n", {}, "header but no rows"),
        (b"a,a,y\n1,2,3\n", {}, "duplicate column name 'a' (columns 1 and 2)"),
        (b"a,b\n1,2\n", {"target": "nope"}, "unknown target column 'nope'"),
        (b"a,y\n1,2\n", {"features": ["b"]}, "unknown feature column 'b'"),
        (b"a,y\n1,k\n2,k\n", {}, "single class 'k'"),
        (b"a,y\n1,k\n2,j\n", {"task": "regression"}, "regression needs numbers"),
        (b"a,b,y\n1,2,3\n4,5\n6,7,8\n", {}, "row 2 has 2 values but the header has 3 columns"),
        (b"a,b,y\n1,2,3\n4,abc,6\n", {}, "column 'b', row 2: 'abc' is not a number"),
        (b"a,y\n1,2\n,3\n", {}, "column 'a' is missing a value at row 2"),
        (b"a,y\n1,2\ninf,3\n", {}, "column 'a', row 2: the value is not finite"),
        (b"a,y\n\xff\xfe,1\n", {}, "UTF-8"),
    ],
)
def test_bad_files_are_refused_with_a_clear_message(data: bytes, options: dict, fragment: str):
    assert fragment in refused(data, **{"target": "y", **options})


def test_a_bad_value_deep_in_a_large_file_is_found():
    rows = b"".join(b"%d,%d,1\n" % (i, i) for i in range(200_000))
    message = refused(b"a,b,y\n" + rows + b"7,x7,1\n", target="y")
    assert "column 'b', row 200001: 'x7' is not a number" in message
    message = refused(b"a,b,y\n" + rows + b"7,1\n", target="y")
    assert "row 200001 has 2 values" in message


def test_limits_on_rows_and_columns():
    small = Limits(max_dataset_rows=2, max_dataset_columns=2)
    assert "3 rows; at most 2" in refused(b"a,y\n1,2\n3,4\n5,6\n", small, target="y")
    assert "3 columns; at most 2" in refused(b"a,b,y\n1,2,3\n", small, target="y")


def test_missing_values_drop_or_mean():
    data = b"a,b,y\n1,,u\n3,4,v\n5,8,\n7,6,u\n"
    dropped = ingest(data, target="y", missing="drop")
    assert dropped.table.num_rows == 2
    assert dropped.stats["b"]["missing"] == 1
    filled = ingest(data, target="y", missing="mean")
    assert filled.table.column("b").to_pylist() == [6.0, 4.0, 6.0]
    assert filled.table.column("y").to_pylist() == ["u", "v", "u"]


def test_a_target_mixing_numbers_and_text_keeps_text_labels():
    rows = b"".join(b"%d,%d\n" % (i, i % 2) for i in range(100_000))
    result = ingest(b"a,y\n" + rows + b"1,other\n", target="y")
    assert result.task == "classification"
    assert [label for label, _ in result.stats["y"]["classes"]] == ["0", "1", "other"]


def test_parquet_with_nan_as_missing_and_text_features():
    table = pa.table({"a": [1.0, float("nan"), 3.0], "b": [1, 2, 3], "y": ["p", "q", "q"]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    result = ingest(sink.getvalue(), target="y", missing="drop")
    assert result.format == "parquet"
    assert result.table.num_rows == 2
    assert result.stats["a"]["missing"] == 1

    sink = io.BytesIO()
    pq.write_table(pa.table({"a": ["1", "2", "zz"], "y": [1, 2, 3]}), sink)
    assert "column 'a', row 3: 'zz' is not a number" in refused(sink.getvalue(), target="y")
    assert "not a readable Parquet file" in refused(b"PAR1garbage", target="y")


def test_json_columns_and_records():
    options = IngestOptions(target="y")
    columns = {"a": [1, 2.5, None], "y": [1.0, 2.0, 3.0]}
    result = ingest_columns(
        columns, options=IngestOptions(target="y", missing="mean"), limits=LIMITS
    )
    assert result.table.column("a").to_pylist() == [1.0, 2.5, 1.75]
    with pytest.raises(DatasetInputError, match="column 'a', row 2: 'x' is not a number"):
        ingest_columns({"a": [1, "x"], "y": [1, 2]}, options=options, limits=LIMITS)
    with pytest.raises(DatasetInputError, match="column 'y' has 1 values but column 'a' has 2"):
        ingest_columns({"a": [1, 2], "y": [1]}, options=options, limits=LIMITS)
    with pytest.raises(DatasetInputError, match="row 2 lacks 'b'"):
        records_to_columns([{"a": 1, "b": 2}, {"a": 3}])
    with pytest.raises(DatasetInputError, match="row 2 has an extra key 'c'"):
        records_to_columns([{"a": 1}, {"a": 3, "c": 4}])


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"a,y\n1,2020-01-01\n2,2020-01-02\n", "is of type date32"),
        (b"a,y\n1,1.5\n2,inf\n", "row 2: the value is not finite"),
    ],
    ids=["date-target", "infinite-target"],
)
def test_targets_that_are_not_numbers_or_labels_are_refused(data: bytes, fragment: str):
    assert fragment in refused(data, target="y")


@pytest.mark.parametrize(
    ("columns", "fragment"),
    [
        ({"x": [1.0, 2.0, 3.0], "y": [1, True, 2]}, "column 'y' cannot be stored"),
        ({"x": [1.0, 2.0, 10**400], "y": [1.0, 2.0, 3.0]}, "column 'x' cannot be stored"),
        ({"x": [1.0, 2.0], "y": [{"a": 1}, {"a": 2}]}, "is of type struct"),
    ],
    ids=["bool-and-int-target", "huge-feature", "struct-target"],
)
def test_json_columns_arrow_cannot_hold_are_refused(columns: dict, fragment: str):
    with pytest.raises(DatasetInputError) as error:
        ingest_columns(columns, options=IngestOptions(target="y"), limits=LIMITS)
    assert fragment in str(error.value)
