"""Parsing and checking uploads with pyarrow, without the API around it."""

import asyncio
import hashlib
import io

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from fastapi import HTTPException
from starlette.requests import Request

from app.config import Limits
from app.datasets import ingest as ingest_module
from app.datasets.ingest import (
    CSV_NULL_MARKERS,
    DatasetInputError,
    DatasetTooLargeError,
    IngestOptions,
    _extremes,
    ingest_columns,
    ingest_file,
    records_to_columns,
)
from app.datasets.uploads import MultipartForm, Spool

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


def too_large(data: bytes | io.BytesIO, limits: Limits, **options) -> DatasetTooLargeError:
    stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    with pytest.raises(DatasetTooLargeError) as error:
        ingest_file(stream, options=IngestOptions(**options), limits=limits)
    assert error.value.status == 413
    return error.value


def parquet(table: pa.Table, **options) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


THREE_ROWS = {"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0], "y": [1.0, 2.0, 3.0]}


@pytest.mark.parametrize("format", ["csv", "parquet"])
@pytest.mark.parametrize(
    ("limits", "options", "loc", "message"),
    [
        (Limits(max_rows=2), {}, "file", "3 rows; at most 2 (max_rows)"),
        (
            Limits(max_cells=5),
            {},
            "file",
            "3 rows x 2 features = 6 cells; at most 5 (max_cells)",
        ),
        (Limits(max_features=1), {}, "file", "2 features; at most 1 (max_features)"),
        (
            Limits(max_features=1),
            {"features": ["b", "a"]},
            "features",
            "2 features; at most 1 (max_features)",
        ),
        (Limits(max_dataset_columns=2), {}, "file", "3 columns; at most 2 (max_dataset_columns)"),
    ],
    ids=["rows", "cells", "features", "listed-features", "columns"],
)
def test_files_over_the_limits_are_413s_naming_the_limit(
    format: str, limits: Limits, options: dict, loc: str, message: str
):
    data = b"a,b,y\n1,4,1\n2,5,2\n3,6,3\n" if format == "csv" else parquet(pa.table(THREE_ROWS))
    error = too_large(data, limits, target="y", **options)
    assert message in error.message
    assert error.loc == ("body", loc)


def test_a_dataset_at_the_limits_is_accepted_and_only_used_columns_count():
    at_limits = Limits(max_rows=3, max_cells=6, max_features=2, max_dataset_columns=3)
    for data in (b"a,b,y\n1,4,1\n2,5,2\n3,6,3\n", parquet(pa.table(THREE_ROWS))):
        assert ingest(data, at_limits, target="y").table.num_rows == 3
        # One feature of two: 3 cells, within a limit the whole file would pass.
        one = ingest(data, Limits(max_cells=3, max_features=1), target="y", features=["b"])
        assert one.features == ["b"]


def test_parquet_limits_are_checked_before_any_column_is_decoded(monkeypatch):
    # The decoding bomb in small: rows x features from the metadata alone.
    data = parquet(pa.table({f"f{i}": [0.0] * 1000 for i in range(20)} | {"y": [0.0] * 1000}))

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("column data was decoded")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", no_decoding)
    monkeypatch.setattr(pq.ParquetFile, "read", no_decoding)
    error = too_large(data, Limits(max_cells=19_999), target="y")
    assert "1000 rows x 20 features = 20000 cells; at most 19999 (max_cells)" in error.message


class EndlessCSV(io.RawIOBase):
    """A header, then one row over and over, made as it is read: 4 GiB that never exist."""

    def __init__(self, header: bytes, row: bytes, size: int = 4 << 30) -> None:
        self.header, self.row, self.size = header, row, size
        self.position = self.served = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: offset, 1: self.position + offset, 2: self.size + offset}[whence]
        return self.position

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.size - self.position)
        if count <= 0:
            return 0
        repeated = self.row * (count // len(self.row) + 2)
        start = self.position - len(self.header)
        if start < 0:
            chunk = (self.header + repeated)[self.position : self.position + count]
        else:
            skip = start % len(self.row)
            chunk = repeated[skip : skip + count]
        buffer[:count] = chunk
        self.position += count
        self.served += count
        return count


def test_csv_stops_at_the_row_limit_without_reading_the_rest():
    stream = EndlessCSV(b"a,y\n", b"1.5,2\n")
    with pytest.raises(DatasetTooLargeError) as error:
        ingest_file(stream, options=IngestOptions(target="y"), limits=Limits(max_rows=1000))
    assert error.value.message.startswith("at least ")
    assert error.value.message.endswith("rows; at most 1000 (max_rows)")
    # Stopped after the first blocks and the reader's read-ahead, not at the end of 4 GiB.
    assert stream.served < 128 * 1024 * 1024


def test_csv_cells_count_the_used_columns_while_streaming():
    rows = b"".join(b"%d,%d,%d,%d\n" % (i, i, i, i % 2) for i in range(100_000))
    data = b"a,b,c,y\n" + rows
    error = too_large(data, Limits(max_cells=150_000), target="y")
    assert "x 3 features = " in error.message
    assert "at most 150000 (max_cells)" in error.message
    accepted = ingest(data, Limits(max_cells=150_000), target="y", features=["a"])
    assert accepted.table.num_rows == 100_000


def test_csv_decoded_bytes_are_bounded():
    # Each empty field costs 1 byte of CSV but 4 bytes of float32 once decoded.
    data = b"a,b,c,d,y\n" + b",,,,1\n" * 200_000
    error = too_large(data, Limits(max_decoded_bytes=1_000_000), target="y", missing="mean")
    assert "at most 1000000 (max_decoded_bytes)" in error.message


def test_a_repeated_long_label_in_parquet_is_refused_before_it_is_spread_over_the_rows():
    # Dictionary-encoded, 20,000 copies of a 1000-character label take a few KB on disk and
    # 20 MB once decoded.
    table = pa.table({"a": [1.0] * 20_000, "y": ["x" * 1000] * 20_000})
    data = parquet(table, compression="zstd")
    assert len(data) < 100_000
    error = too_large(data, Limits(max_decoded_bytes=5_000_000), target="y")
    assert "the data decodes to at least" in error.message
    assert "at most 5000000 (max_decoded_bytes)" in error.message
    # Written without a dictionary, the column chunk's own size gives it away.
    plain = parquet(table, compression="zstd", use_dictionary=False)
    error = too_large(plain, Limits(max_decoded_bytes=5_000_000), target="y")
    assert "column 'y' decodes to" in error.message
    assert "in row group 1; at most 5000000" in error.message


def test_a_huge_parquet_footer_is_refused_before_it_is_decoded():
    data = b"PAR1" + b"\0" * 64 + (64 * 1024 * 1024).to_bytes(4, "little") + b"PAR1"
    assert "the Parquet metadata is 67108864 bytes" in too_large(data, LIMITS, target="y").message


def test_parquet_text_features_are_checked_batch_by_batch():
    values = ["1.5"] * 150_000 + ["zz"] + ["2"] * 10
    data = parquet(pa.table({"a": values, "y": [1.0] * len(values)}))
    assert "column 'a', row 150001: 'zz' is not a number" in refused(data, target="y")
    good = parquet(pa.table({"a": ["1.5", "2", None], "y": ["p", "q", "q"]}))
    result = ingest(good, target="y", missing="drop")
    assert result.table.column("a").to_pylist() == [1.5, 2.0]
    assert result.table.column("y").type == pa.string()


def test_text_numbers_arrow_cannot_read_are_named_not_crashed_on():
    # Python's float() reads "1_000"; Arrow does not, so it must be named, not raised.
    assert "column 'a', row 2: '1_000' is not a number" in refused(
        b"a,y\n1,2\n1_000,3\n", target="y"
    )
    assert "column 'b', row 1: 'x' is not a number" in refused(b"a,b,y\n1,x,1\ny,2,1\n", target="y")


@pytest.mark.parametrize("sent_as", ["columns", "records"])
def test_json_over_the_limits_is_refused_before_arrow_arrays_are_built(sent_as: str):
    columns = {"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0], "y": [1, 2, 3]}
    cases = [
        (Limits(max_rows=2), "3 rows; at most 2 (max_rows)"),
        (Limits(max_cells=5), "3 rows x 2 features = 6 cells; at most 5 (max_cells)"),
        (Limits(max_features=1), "2 features; at most 1 (max_features)"),
        (Limits(max_dataset_columns=2), "3 columns; at most 2 (max_dataset_columns)"),
    ]
    for limits, message in cases:
        with pytest.raises(DatasetTooLargeError) as error:
            ingest_columns(
                columns, options=IngestOptions(target="y"), limits=limits, sent_as=sent_as
            )
        assert message in error.value.message
        assert error.value.loc == ("body", sent_as)


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


def test_every_default_null_token_but_the_empty_one_holds_a_marker_byte():
    # A segment without a marker byte is read with null_values=[""], which must then mean
    # the same as pyarrow's defaults.
    for token in ingest_module.CSV_NULL_VALUES:
        assert token == "" or any(marker in token.encode() for marker in CSV_NULL_MARKERS)


def test_csv_segments_read_as_the_whole_file_would(monkeypatch):
    monkeypatch.setattr(ingest_module, "CSV_SEGMENT_BYTES", 64)

    def value(i: int) -> str:
        # Quotes and null tokens in some segments only, so segments read with different options.
        return f'"{i}"' if i % 37 == 0 else "NA" if i % 41 == 0 else "" if i % 43 == 0 else str(i)

    data = "a,b,y\n" + "".join(f"{i / 4},{value(i)},{i % 3}\n" for i in range(300))
    result = ingest(data.encode(), target="y", missing="drop")
    whole = pacsv.read_csv(
        io.BytesIO(data.encode()),
        convert_options=pacsv.ConvertOptions(column_types={"a": pa.float32(), "b": pa.float32()}),
    ).drop_null()
    # "NA" at 41, 82, ... 287 and "" at 43, 86, ... 258 are missing; "0", "37", ... are quoted.
    assert result.table.num_rows == 300 - 7 - 6
    assert result.table.combine_chunks().equals(whole.combine_chunks())
    assert result.stats["b"]["missing"] == 7 + 6


def test_a_later_segment_must_read_as_the_first(monkeypatch):
    monkeypatch.setattr(ingest_module, "CSV_SEGMENT_BYTES", 64)
    rows = "".join(f"{i},{i % 2}\n" for i in range(100))
    # The first segment makes the target int64; a float later reads it again as labels.
    result = ingest(f"a,y\n{rows}7,1.5\n".encode(), target="y")
    assert result.task == "classification"
    assert [label for label, _ in result.stats["y"]["classes"]] == ["0", "1", "1.5"]
    # A segment of blank lines holds no rows, so it says nothing of the target's type.
    blank_first = ingest(b"a,y\n" + b"\n" * 100 + rows.encode(), target="y")
    assert (blank_first.task, blank_first.table.column("y").type) == ("regression", pa.int64())


def test_a_row_longer_than_a_segment_is_refused(monkeypatch):
    monkeypatch.setattr(ingest_module, "CSV_SEGMENT_BYTES", 64)
    data = b"a,y\n1,2\n" + b"1" * 100 + b",2\n" + b"3,4\n" * 40
    assert "a row is longer than 64 bytes" in refused(data, target="y")


def test_extremes_skip_nulls_and_nan_like_arrow():
    floats = pa.chunked_array([[0.5], [1.0, float("nan")], []], pa.float32())
    assert _extremes(floats) == (0.5, 1.0)
    assert _extremes(pa.chunked_array([[3, None], [7]])) == (3, 7)
    assert _extremes(pa.chunked_array([[3, 1], [], [7]])) == (1, 7)
    assert _extremes(pa.chunked_array([[float("-inf"), 2.0]])) == (float("-inf"), 2.0)


def send(request: httpx.Request, form: MultipartForm, piece: int = 7) -> None:
    """Feed a request's body to the form in small pieces, as a server would."""
    body = request.read()
    messages = [
        {"type": "http.request", "body": body[start : start + piece], "more_body": True}
        for start in range(0, len(body), piece)
    ]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(form.read(Request(scope, receive), request.headers["content-type"]))


def multipart(files: list | None = None, **fields) -> httpx.Request:
    files = files or [("file", ("d.csv", b"a,y\n1,2\n"))]
    return httpx.Request("POST", "http://x/", files=files, data=fields)


def test_multipart_upload_is_spooled_and_hashed_in_one_pass(tmp_path):
    data = b"a,y\n" + b"1,2\n" * 1000
    with (tmp_path / "spool").open("w+b") as file:
        spool = Spool(file)
        form = MultipartForm(spool)
        files = [("file", ("d.csv", data, "text/csv")), ("other", ("o.bin", b"x"))]
        request = multipart(files=files[:1], target="y", features=["a", "b"], name="ünï")
        send(request, form)
        file.seek(0)
        assert file.read() == data
    assert spool.sha256() == hashlib.sha256(data).hexdigest()
    assert form.filename == "d.csv"
    assert form.fields == [("target", "y"), ("features", "a"), ("features", "b"), ("name", "ünï")]

    elsewhere = MultipartForm(Spool(io.BytesIO()))
    send(multipart(files=files[1:], target="y"), elsewhere)
    assert elsewhere.filename is None


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            multipart(files=[("file", ("a", b"1")), ("file", ("b", b"2"))]),
            "Too many files. Maximum number of files is 1.",
        ),
        (
            multipart(**{f"f{i}": "1" for i in range(33)}),
            "Too many fields. Maximum number of fields is 32.",
        ),
        (multipart(target="y" * (1024 * 1024 + 1)), "Part exceeded maximum size of 1024KB."),
        (
            httpx.Request(
                "POST", "http://x/", content=b"garbage", headers={"content-type": "multipart/x"}
            ),
            "Missing boundary in multipart.",
        ),
        (
            httpx.Request(
                "POST",
                "http://x/",
                content=b"garbage",
                headers={"content-type": "multipart/form-data; boundary=xyz"},
            ),
            "Invalid multipart data.",
        ),
    ],
    ids=["files", "fields", "field-size", "boundary", "garbage"],
)
def test_multipart_forms_keep_starlettes_limits(request_: httpx.Request, message: str):
    with pytest.raises(HTTPException) as error:
        send(request_, MultipartForm(Spool(io.BytesIO())))
    assert (error.value.status_code, error.value.detail) == (400, message)
