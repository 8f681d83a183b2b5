"""Parse uploaded CSV, Parquet or JSON with pyarrow into checked columns, stats and a preview.

Rows are numbered from 1 after the header in every message, so "row 3" of a CSV file is its
fourth line.
"""

import csv
import hashlib
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.config import Limits
from app.errors import InvalidInputError, Loc, PayloadTooLargeError
from app.training.data import label_order
from app.training.spec import Task

MissingPolicy = Literal["error", "drop", "mean"]
DELIMITERS = (",", ";", "\t")
PARQUET_MAGIC = b"PAR1"
HEADER_PROBE_BYTES = 1024 * 1024
HASH_CHUNK_BYTES = 1024 * 1024
# CSV parsed per pyarrow.csv.read_csv call (its 1 MiB blocks in parallel). Measured on 100 MB:
# 4 MiB is as fast as 16 or 32 and peaks 40-80 MB lower, as the parse reuses its memory; one
# segment decodes to at most ~4 bytes a byte of CSV, so the budget stops little past a limit.
CSV_SEGMENT_BYTES = 4 * 1024 * 1024
# The text pyarrow reads as a missing value (its defaults); every one but "" holds a byte of
# CSV_NULL_MARKERS.
CSV_NULL_VALUES = pacsv.ConvertOptions().null_values
CSV_NULL_MARKERS = (b"n", b"N")
PREVIEW_ROWS = 10
FEATURE_TYPE = pa.float32()
# The Parquet footer (its schema and row-group metadata) is decoded whole before anything can be
# checked, so its length is bounded first; a footer this long describes millions of column chunks.
PARQUET_FOOTER_MAX_BYTES = 16 * 1024 * 1024
# Values decoded at a time from Parquet (the rows of a batch times its columns): each batch
# is converted to float32 before the next is read.
PARQUET_BATCH_CELLS = 1024 * 1024
PARQUET_BATCH_ROWS = 64 * 1024
# Text values cast to numbers a slice at a time when looking for the first that is no number.
CAST_PROBE_VALUES = 4096


class DatasetInputError(InvalidInputError):
    """The data cannot be used; `loc` names the offending part of the request body."""

    type = "invalid_dataset"

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message, loc=("body", *loc))


class DatasetTooLargeError(PayloadTooLargeError):
    """The data decodes to more than the limits allow (a 413); the message names the limit."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message, loc=("body", *loc))


class _Budget:
    """Counts the rows and decoded bytes of an upload as they are read, refusing (413) as soon
    as they pass a limit, so memory never holds much more than the limits allow."""

    def __init__(self, *, features: int, limits: Limits, loc: Loc) -> None:
        self.features = features
        self.limits = limits
        self.loc = loc
        self.rows = 0
        self.bytes = 0

    def add(self, rows: int, nbytes: int = 0) -> None:
        """Count one more batch and the bytes it holds; the rows so far are a lower bound."""
        self.rows += rows
        _check_shape(self.rows, self.features, self.limits, self.loc, at_least=True)
        self.ensure(nbytes)
        self.bytes += nbytes

    def ensure(self, nbytes: int) -> None:
        """Refuse before decoding `nbytes` more would pass max_decoded_bytes."""
        if self.bytes + nbytes > self.limits.max_decoded_bytes:
            raise DatasetTooLargeError(
                self.loc,
                f"the data decodes to at least {self.bytes + nbytes} bytes; "
                f"at most {self.limits.max_decoded_bytes} (max_decoded_bytes)",
            )


def _check_shape(rows: int, features: int, limits: Limits, loc: Loc, *, at_least: bool) -> None:
    """Refuse (413) data a run could not train on: the same bounds as `check_limits` of runs."""
    counted = "at least " if at_least else ""
    cells = rows * features
    if cells > limits.max_cells:
        raise DatasetTooLargeError(
            loc,
            f"{counted}{rows} rows x {features} features = {cells} cells; "
            f"at most {limits.max_cells} (max_cells)",
        )
    if rows > limits.max_rows:
        raise DatasetTooLargeError(
            loc, f"{counted}{rows} rows; at most {limits.max_rows} (max_rows)"
        )


@dataclass(frozen=True)
class IngestOptions:
    """What the caller said about the upload."""

    target: str
    features: list[str] | None = None
    missing: MissingPolicy = "error"
    task: Task | None = None
    delimiter: str | None = None


@dataclass(frozen=True)
class Ingested:
    """A checked dataset: feature columns as float32, then the target as uploaded."""

    table: pa.Table
    format: str
    task: Task
    features: list[str]
    columns: list[dict[str, str]]
    stats: dict[str, dict[str, Any]]
    preview: list[dict[str, Any]]


def sha256_of(stream: IO[bytes]) -> str:
    """The sha256 of a seekable stream's bytes, leaving it rewound."""
    digest = hashlib.sha256()
    stream.seek(0)
    while chunk := stream.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


def ingest_file(stream: IO[bytes], *, options: IngestOptions, limits: Limits) -> Ingested:
    """Read an uploaded CSV or Parquet file (told apart by Parquet's magic bytes)."""
    stream.seek(0)
    probe = stream.read(HEADER_PROBE_BYTES)
    stream.seek(0)
    if not probe.strip():
        raise DatasetInputError(("file",), "the file is empty")
    if probe.startswith(PARQUET_MAGIC):
        return _finish(_read_parquet(stream, options, limits), "parquet", options, limits)
    return _finish(_read_csv(stream, probe, options, limits), "csv", options, limits)


def ingest_columns(
    columns: dict[str, list[Any]],
    *,
    options: IngestOptions,
    limits: Limits,
    sent_as: Literal["columns", "records"] = "columns",
) -> Ingested:
    """Build a dataset from JSON columns (every list one column, all the same length).

    `sent_as` says how the body carried them, so an error names the place the client wrote:
    `columns.NAME`, or `records.ROW.NAME` for columns made from records.
    """

    def loc(name: str, index: int | None = None) -> Loc:
        if sent_as == "columns":
            return ("columns", name)
        return ("records",) if index is None else ("records", index, name)

    _check_names(list(columns), options, limits, where=(sent_as,))
    lengths = {name: len(values) for name, values in columns.items()}
    first = next(iter(columns))
    for name, length in lengths.items():
        if length != lengths[first]:
            raise DatasetInputError(
                ("columns", name),
                f"column {name!r} has {length} values but column {first!r} has "
                f"{lengths[first]}; every column needs one value per row",
            )
    selected = _selected(list(columns), options)
    # The body is already bounded in bytes; its shape is checked before any Arrow array is built.
    _check_shape(lengths[first], len(selected) - 1, limits, (sent_as,), at_least=False)
    arrays = {}
    for name in selected:
        values = columns[name]
        if name == options.target:
            arrays[name] = _json_target(name, values, loc)
            continue
        for index, value in enumerate(values):
            if value is not None and not _is_json_number(value):
                raise _not_a_number(name, index, value, loc=loc(name, index))
        # from_pandas: a NaN is a missing value here, as in CSV and Parquet.
        arrays[name] = _arrow_array(name, values, loc(name), type=FEATURE_TYPE, from_pandas=True)
    return _finish(pa.table(arrays), "json", options, limits)


def records_to_columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Turn JSON records into columns; every record must have the first record's keys."""
    if not records:
        raise DatasetInputError(("records",), "records is empty; send at least one row")
    names = list(records[0])
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, record in enumerate(records):
        if record.keys() != columns.keys():
            missing = [name for name in names if name not in record]
            extra = [name for name in record if name not in columns]
            problem = f"lacks {missing[0]!r}" if missing else f"has an extra key {extra[0]!r}"
            raise DatasetInputError(
                ("records", index),
                f"row {index + 1} {problem}; every record needs the keys of row 1",
            )
        for name in names:
            columns[name].append(record[name])
    return columns


def _json_target(name: str, values: list[Any], loc: Callable[..., Loc]) -> pa.Array:
    kinds = {type(value) for value in values if value is not None}
    if str in kinds and kinds != {str}:
        index = next(i for i, value in enumerate(values) if not isinstance(value, str | None))
        raise DatasetInputError(
            loc(name, index),
            f"target column {name!r} mixes strings and numbers (row {index + 1}); "
            "use one kind of label",
        )
    return _arrow_array(name, values, loc(name))


def _arrow_array(name: str, values: list[Any], loc: Loc, **options: Any) -> pa.Array:
    try:
        return pa.array(values, **options)
    except (pa.ArrowException, OverflowError) as error:
        raise DatasetInputError(loc, f"column {name!r} cannot be stored: {error}") from None


def _selected(names: list[str], options: IngestOptions) -> list[str]:
    """The feature columns in file order, then the target."""
    wanted = options.features
    features = [name for name in names if name != options.target and (not wanted or name in wanted)]
    if wanted:
        features = [name for name in wanted if name in features]
    return [*features, options.target]


def _check_names(
    names: list[str], options: IngestOptions, limits: Limits, where: Loc = ("file",)
) -> None:
    """Check the column names; `where` is the loc of a 413 for too many columns or features."""
    if len(names) > limits.max_dataset_columns:
        raise DatasetTooLargeError(
            where,
            f"{len(names)} columns; at most {limits.max_dataset_columns} (max_dataset_columns)",
        )
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if not name.strip():
            raise DatasetInputError(("file",), f"column {position} has an empty name")
        if name in seen:
            raise DatasetInputError(
                ("file",),
                f"duplicate column name {name!r} (columns {seen[name]} and {position}); "
                "every column needs its own name",
            )
        seen[name] = position
    available = ", ".join(repr(name) for name in names)
    if options.target not in seen:
        raise DatasetInputError(
            ("target",), f"unknown target column {options.target!r}; the columns are {available}"
        )
    for name in options.features or []:
        if name not in seen:
            raise DatasetInputError(
                ("features",), f"unknown feature column {name!r}; the columns are {available}"
            )
        if name == options.target:
            raise DatasetInputError(("features",), f"{name!r} is the target, not a feature")
    features = len(_selected(names, options)) - 1
    if features < 1:
        raise DatasetInputError(("features",), "no feature columns besides the target")
    if features > limits.max_features:
        raise DatasetTooLargeError(
            ("features",) if options.features else where,
            f"{features} features; at most {limits.max_features} (max_features)",
        )


def _header(probe: bytes, delimiter: str | None) -> tuple[list[str], str]:
    end = probe.find(b"\n")
    if end < 0 and len(probe) == HEADER_PROBE_BYTES:
        raise DatasetInputError(
            ("file",), f"the header line is longer than {HEADER_PROBE_BYTES} bytes"
        )
    line = probe[: end if end >= 0 else len(probe)]
    try:
        text = line.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError as error:
        raise DatasetInputError(("file",), f"the header is not UTF-8: {error}") from None
    if delimiter is None:
        delimiter = max(DELIMITERS, key=text.count)
    try:
        return next(csv.reader([text], delimiter=delimiter)), delimiter
    except csv.Error as error:
        raise DatasetInputError(("file",), f"cannot read the header line: {error}") from None


def _read_csv(stream: IO[bytes], probe: bytes, options: IngestOptions, limits: Limits) -> pa.Table:
    names, delimiter = _header(probe, options.delimiter)
    _check_names(names, options, limits)
    selected = _selected(names, options)
    features = selected[:-1]
    feature_types = dict.fromkeys(features, FEATURE_TYPE)
    # `_header` found the line's end within the probe, or the probe is the whole file.
    rows_start = probe.find(b"\n") + 1 or len(probe)

    def read(
        types: dict[str, pa.DataType], check: Callable[[pa.Table, int], None] | None = None
    ) -> pa.Table:
        # A segment at a time: memory holds what is kept and one segment's parse, and the
        # budget stops the read as soon as the rows pass a limit.
        budget = _Budget(features=len(features), limits=limits, loc=("file",))
        kept = []
        for segment in _csv_segments(stream, rows_start):
            table = _parse_segment(segment, names, delimiter, types, selected)
            if not table.num_rows:
                # Blank lines only: nothing to keep, and nothing said of the target's type.
                continue
            if options.target not in types:
                # Later segments must read as the first did, as one pyarrow reader's blocks do.
                types = {**types, options.target: table.schema.field(options.target).type}
            if check is None:
                budget.add(table.num_rows, table.nbytes)
                kept.append(table)
            else:
                # Only looked at, never kept.
                check(table, budget.rows)
                budget.add(table.num_rows)
        if not kept:
            return pa.table({name: pa.array([], FEATURE_TYPE) for name in selected})
        return pa.concat_tables(kept)

    def first_bad_number(table: pa.Table, offset: int) -> None:
        found = [
            (index, position, name)
            for position, name in enumerate(features)
            if (index := _first_bad_number(table.column(name))) >= 0
        ]
        if found:
            index, _, name = min(found)
            raise _not_a_number(name, offset + index, table.column(name)[index].as_py())

    def refusal(error: pa.ArrowInvalid) -> DatasetInputError:
        if "CSV parse error" in str(error):
            return _ragged(stream, delimiter, names, error)
        return _unreadable(error)

    try:
        return read(feature_types)
    except pa.ArrowInvalid as error:
        if "conversion error" not in str(error):
            raise refusal(error) from None
    try:
        # A conversion failed: read the columns as text to name the first value that is no
        # number, a segment at a time.
        read(dict.fromkeys(selected, pa.string()), check=first_bad_number)
        # The features are fine, so the target mixes numbers and text: keep its labels as text.
        return read({**feature_types, options.target: pa.string()})
    except pa.ArrowInvalid as error:
        raise refusal(error) from None


@dataclass(frozen=True)
class _Segment:
    """Whole rows of a CSV file: the first `end` bytes of `data`."""

    data: bytes
    end: int

    def has_any(self, needles: tuple[bytes, ...]) -> bool:
        """Whether any of the byte strings occurs in the segment."""
        return any(self.data.find(needle, 0, self.end) >= 0 for needle in needles)


def _csv_segments(stream: IO[bytes], start: int) -> Iterator[_Segment]:
    """The rows from `start` on, cut after a line end every CSV_SEGMENT_BYTES or so.

    pyarrow's reader cuts its blocks at any line end too (a quoted value may not hold one),
    so the segments parse as the whole file would.
    """
    size = stream.seek(0, 2)
    position = start
    while position < size:
        stream.seek(position)
        data = stream.read(min(CSV_SEGMENT_BYTES, size - position))
        if not data:
            return
        end = len(data)
        if position + end < size:
            end = data.rfind(b"\n") + 1
            if end == 0:
                raise _unreadable(f"a row is longer than {CSV_SEGMENT_BYTES} bytes")
        yield _Segment(data, end)
        position += end


def _parse_segment(
    segment: _Segment,
    names: list[str],
    delimiter: str,
    types: dict[str, pa.DataType],
    selected: list[str],
) -> pa.Table:
    """Parse one segment with all of pyarrow's threads."""
    # Quote handling and the null-token lookup cost a sixth of the parse; a segment without
    # a quote, or without any byte that every null token but "" holds, reads the same without.
    quote: str | bool = '"' if segment.has_any((b'"',)) else False
    nulls = CSV_NULL_VALUES if segment.has_any(CSV_NULL_MARKERS) else [""]
    return pacsv.read_csv(
        pa.py_buffer(memoryview(segment.data)[: segment.end]),
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=quote),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            include_columns=selected,
            null_values=nulls,
            strings_can_be_null=True,
        ),
    )


def _ragged(
    stream: IO[bytes], delimiter: str, names: list[str], error: pa.ArrowInvalid
) -> DatasetInputError:
    """Find the first row whose field count differs from the header's (single-threaded)."""
    bad: list[pacsv.InvalidRow] = []

    def record(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "error"

    stream.seek(0)
    try:
        # Streamed as text and thrown away a block at a time: it holds no more than a block.
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=record),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
        )
        for _batch in reader:
            pass
    except pa.ArrowInvalid as again:
        error = again
    if not bad:
        return _unreadable(error)
    row = bad[0]
    where = f"row {row.number - 1}" if row.number is not None else f"the row {row.text[:80]!r}"
    return DatasetInputError(
        ("file",),
        f"{where} has {row.actual_columns} values but the header has {len(names)} columns; "
        "every row needs one value per column",
    )


def _unreadable(error: Exception | str) -> DatasetInputError:
    return DatasetInputError(("file",), f"cannot read the file as UTF-8 CSV: {error}")


def _read_parquet(stream: IO[bytes], options: IngestOptions, limits: Limits) -> pa.Table:
    """Check the metadata against the limits, then decode a batch at a time into float32."""
    _check_parquet_footer(stream)
    try:
        parquet = pq.ParquetFile(stream)
        schema = parquet.schema_arrow
    except pa.ArrowException as error:
        raise DatasetInputError(("file",), f"not a readable Parquet file: {error}") from None
    names = schema.names
    _check_names(names, options, limits)
    selected = _selected(names, options)
    features = selected[:-1]
    metadata = parquet.metadata
    # Before any column data is read: the rows and cells the metadata promises.
    _check_shape(metadata.num_rows, len(features), limits, ("file",), at_least=False)
    for name in features:
        kind = schema.field(name).type
        value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not (_is_text(value_kind) or _is_number_type(value_kind)):
            raise DatasetInputError(
                ("file",), f"column {name!r} has type {kind}; features must be numbers"
            )
    _check_column_chunks(metadata, selected, limits)
    # Text columns are read as dictionaries: a long value repeated on every row is decoded
    # once, and its size is counted before it is spread over the rows.
    parquet = pq.ParquetFile(stream, metadata=metadata, read_dictionary=selected)
    budget = _Budget(features=len(features), limits=limits, loc=("file",))
    batch_rows = max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_CELLS // len(selected)))
    batches = parquet.iter_batches(batch_size=batch_rows, columns=selected)
    kept = []
    while True:
        try:
            batch = next(batches, None)
        except pa.ArrowInvalid as error:
            raise DatasetInputError(("file",), f"not a readable Parquet file: {error}") from None
        if batch is None:
            break
        columns = [_feature_column(name, batch.column(name), budget.rows) for name in features]
        columns.append(_label_column(batch.column(options.target), budget))
        converted = pa.RecordBatch.from_arrays(columns, names=selected)
        budget.add(batch.num_rows, converted.nbytes)
        kept.append(converted)
    if not kept:
        return pa.table({name: pa.array([], FEATURE_TYPE) for name in selected})
    return pa.Table.from_batches(kept)


def _check_parquet_footer(stream: IO[bytes]) -> None:
    """Refuse a footer too long to decode safely; a malformed one is left to the reader."""
    size = stream.seek(0, 2)
    if size >= 2 * len(PARQUET_MAGIC) + 4:
        stream.seek(size - 8)
        (length,) = struct.unpack("<I", stream.read(4))
        if stream.read(4) == PARQUET_MAGIC and length > PARQUET_FOOTER_MAX_BYTES:
            raise DatasetTooLargeError(
                ("file",),
                f"the Parquet metadata is {length} bytes; at most {PARQUET_FOOTER_MAX_BYTES}",
            )
    stream.seek(0)


def _check_column_chunks(metadata: pq.FileMetaData, selected: list[str], limits: Limits) -> None:
    """Refuse a column chunk that says it decodes (uncompressed) to more than the limit."""
    wanted = set(selected)
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            name = chunk.path_in_schema.split(".")[0]
            size = chunk.total_uncompressed_size
            if name in wanted and size > limits.max_decoded_bytes:
                raise DatasetTooLargeError(
                    ("file",),
                    f"column {name!r} decodes to {size} bytes in row group {group + 1}; "
                    f"at most {limits.max_decoded_bytes} (max_decoded_bytes)",
                )


def _feature_column(name: str, column: pa.Array, offset: int) -> pa.Array:
    """One batch of a Parquet feature column as float32; `offset` is its first row's index."""
    if pa.types.is_dictionary(column.type):
        dictionary, indices = column.dictionary, column.indices
        bad = _bad_numbers(dictionary) if _is_text(dictionary.type) else []
        if bad:
            used = _first_true(pc.is_in(indices, value_set=pa.array(bad, indices.type)))
            if used >= 0:
                value = dictionary[indices[used].as_py()].as_py()
                raise _not_a_number(name, offset + used, value)
            unused = np.zeros(len(dictionary), dtype=bool)
            unused[bad] = True
            dictionary = pc.if_else(pa.array(unused), pa.scalar(None, dictionary.type), dictionary)
        converted = pc.take(pc.cast(dictionary, FEATURE_TYPE), indices)
    else:
        if _is_text(column.type):
            index = _first_bad_number(column)
            if index >= 0:
                raise _not_a_number(name, offset + index, column[index].as_py())
        converted = pc.cast(column, FEATURE_TYPE)
    # NaN is how Parquet writers often spell a missing number.
    return pc.if_else(pc.is_nan(converted), None, converted)


def _label_column(column: pa.Array, budget: _Budget) -> pa.Array:
    """One batch of a Parquet target column, a dictionary decoded once its size is known."""
    if not pa.types.is_dictionary(column.type):
        return column
    if _is_text(column.dictionary.type):
        lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
        budget.ensure((pc.sum(lengths).as_py() or 0) + 8 * len(column))
    return column.dictionary_decode()


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_number_type(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _castable(values: pa.Array) -> bool:
    try:
        pc.cast(values, FEATURE_TYPE)
    except pa.ArrowInvalid:
        return False
    return True


def _bad_numbers(values: pa.Array, first_only: bool = False) -> list[int]:
    """Indices of the text values that are not numbers (as Arrow reads them), in order.

    Slices are cast whole; only a slice that fails is looked at value by value.
    """
    bad: list[int] = []
    for start in range(0, len(values), CAST_PROBE_VALUES):
        chunk = values.slice(start, CAST_PROBE_VALUES)
        if _castable(chunk):
            continue
        for index in range(len(chunk)):
            if not _castable(chunk.slice(index, 1)):
                bad.append(start + index)
                if first_only:
                    return bad
    return bad


def _first_bad_number(column: pa.Array) -> int:
    """The index of the first value of a text column that is not a number, or -1."""
    bad = _bad_numbers(column, first_only=True)
    return bad[0] if bad else -1


def _is_json_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _not_a_number(
    name: str, index: int, value: object, loc: tuple[str | int, ...] = ("file",)
) -> DatasetInputError:
    return DatasetInputError(
        loc,
        f"column {name!r}, row {index + 1}: {str(value)[:40]!r} is not a number; "
        "features must be numeric",
    )


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return pc.index(mask, True).as_py()


def _finish(raw: pa.Table, format: str, options: IngestOptions, limits: Limits) -> Ingested:
    if raw.num_rows == 0:
        raise DatasetInputError(("file",), "the data has a header but no rows")
    features = raw.column_names[:-1]
    target = raw.column(options.target)
    if not _is_label_type(target.type):
        raise DatasetInputError(
            ("target",),
            f"target {options.target!r} is of type {target.type}; use numbers or text labels",
        )
    target_extremes = _extremes(target) if _is_numeric(target.type) else None
    if target_extremes is not None and _infinite(target_extremes):
        raise DatasetInputError(
            ("target",),
            f"target {options.target!r}, row {_first_infinite(target) + 1}: "
            "the value is not finite",
        )
    extremes = {name: _extremes(raw.column(name)) for name in features}
    for name in features:
        if _infinite(extremes[name]):
            raise DatasetInputError(
                ("file",),
                f"column {name!r}, row {_first_infinite(raw.column(name)) + 1}: "
                "the value is not finite",
            )
    task = _task(options, target)
    stats = {
        name: _numeric_stats(raw.column(name), extremes[name], exact=_shortest) for name in features
    }
    stats[options.target] = (
        _numeric_stats(target, target_extremes)
        if target_extremes is not None
        else {"missing": target.null_count}
    )
    table = _apply_missing(raw, options)
    if task == "classification":
        classes = _class_counts(table.column(options.target), limits)
        stats[options.target]["classes"] = classes
        if len(classes) < 2:
            raise DatasetInputError(
                ("target",),
                f"target {options.target!r} has a single class {classes[0][0]!r}; "
                "classification needs at least 2",
            )
    columns = [
        {"name": name, "type": str(table.column(name).type), "role": "feature"} for name in features
    ]
    columns.append(
        {"name": options.target, "type": str(table.column(options.target).type), "role": "target"}
    )
    return Ingested(
        table=table,
        format=format,
        task=task,
        features=features,
        columns=columns,
        stats=stats,
        preview=[
            {name: _shortest(value) if name in features else value for name, value in row.items()}
            for row in table.slice(0, PREVIEW_ROWS).to_pylist()
        ],
    )


def _is_label_type(kind: pa.DataType) -> bool:
    return (
        _is_numeric(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    )


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)


def _task(options: IngestOptions, target: pa.ChunkedArray) -> Task:
    if _is_numeric(target.type):
        return options.task or "regression"
    if options.task == "regression":
        raise DatasetInputError(
            ("target",),
            f"target {options.target!r} holds labels ({target.type}), not numbers; "
            "regression needs numbers",
        )
    return "classification"


def _finite_or_none(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _shortest(value: float | None) -> float | None:
    """A float32 as the shortest decimal that reads back to it (0.1, not 0.10000000149)."""
    return None if value is None else float(str(np.float32(value)))


def _extremes(column: pa.ChunkedArray) -> tuple[Any, Any]:
    """The smallest and largest value, nulls and NaN skipped as pc.min_max skips them."""
    if column.null_count == 0 and len(column) and _is_number_type(column.type):
        # numpy finds them ~40x faster than pc.min_max, in place, chunk by chunk; it yields
        # NaN if there is one.
        chunks = [chunk.to_numpy() for chunk in column.chunks if len(chunk)]
        low = np.min([chunk.min() for chunk in chunks])
        high = np.max([chunk.max() for chunk in chunks])
        if not (np.isnan(low) or np.isnan(high)):
            return low.item(), high.item()
    extremes = pc.min_max(column)
    return extremes["min"].as_py(), extremes["max"].as_py()


def _infinite(extremes: tuple[Any, Any]) -> bool:
    return any(isinstance(value, float) and math.isinf(value) for value in extremes)


def _first_infinite(column: pa.ChunkedArray) -> int:
    return _first_true(pc.is_inf(column))


def _numeric_stats(
    column: pa.ChunkedArray,
    extremes: tuple[Any, Any],
    exact: Callable[[Any], Any] = lambda value: value,
) -> dict[str, Any]:
    low, high = extremes
    return {
        "min": _finite_or_none(exact(low)),
        "max": _finite_or_none(exact(high)),
        "mean": _finite_or_none(pc.mean(column).as_py()),
        "std": _finite_or_none(pc.stddev(column).as_py()),
        "missing": column.null_count,
    }


def _class_counts(target: pa.ChunkedArray, limits: Limits) -> list[list[Any]]:
    """[label, count] pairs in the order training numbers the classes."""
    counts = {item["values"]: item["counts"] for item in pc.value_counts(target).to_pylist()}
    if len(counts) > limits.max_classes:
        raise DatasetInputError(("target",), f"{len(counts)} classes; at most {limits.max_classes}")
    return [[label, counts[label]] for label in label_order(list(counts))]


def _apply_missing(table: pa.Table, options: IngestOptions) -> pa.Table:
    """Refuse, drop or fill missing values as the policy says; the target is never filled."""
    if options.missing == "error":
        for name in table.column_names:
            column = table.column(name)
            if column.null_count:
                row = _first_true(pc.is_null(column))
                raise DatasetInputError(
                    ("file",),
                    f"column {name!r} is missing a value at row {row + 1}; "
                    "fix the data or pass missing=drop or missing=mean",
                )
        return table
    if not any(column.null_count for column in table.columns):
        # drop_null copies every column even when it drops nothing.
        return table
    if options.missing == "mean":
        table = pa.table(
            {name: _fill_mean(name, table.column(name), options) for name in table.column_names}
        )
    kept = table.drop_null()
    if kept.num_rows == 0:
        raise DatasetInputError(("file",), "no rows are left once rows missing values are dropped")
    return kept


def _fill_mean(name: str, column: pa.ChunkedArray, options: IngestOptions) -> pa.ChunkedArray:
    if name == options.target or not column.null_count:
        return column
    mean = pc.mean(column).as_py()
    if mean is None:
        raise DatasetInputError(
            ("file",), f"column {name!r} has no values at all; its mean is undefined"
        )
    return pc.fill_null(column, pa.scalar(mean, FEATURE_TYPE))
