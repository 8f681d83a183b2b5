"""Inputs the schema fuzzing found answered with a 500: each is now a named 4xx."""

import io

import pytest
from pydantic import TypeAdapter, ValidationError

from app.config import Limits
from app.datasets.ingest import DatasetInputError, IngestOptions, ingest_file
from app.datasets.schemas import DatasetOptions
from app.ids import MAX_ID, Id
from app.serving.service import InputShapeError, parse_csv


def test_an_id_past_32_bits_is_a_validation_error_not_an_overflow():
    ids = TypeAdapter(Id)
    assert ids.validate_python(MAX_ID) == MAX_ID
    with pytest.raises(ValidationError, match="less than or equal to 2147483647"):
        ids.validate_python(MAX_ID + 1)


def test_a_predict_csv_with_bare_carriage_returns_is_read_and_an_unreadable_one_named():
    # A bare \r (old Mac line ends) is a line end, not a crash.
    rows = parse_csv(body=b"x\r1")
    assert (rows.header, rows.inputs) == (["x"], [[1.0]])
    with pytest.raises(InputShapeError, match="the CSV body cannot be read"):
        parse_csv(body=b"x\n" + b"1" * 200_000)


def test_a_header_the_csv_module_cannot_read_is_a_dataset_input_error():
    with pytest.raises(DatasetInputError, match="cannot read the header line"):
        ingest_file(
            io.BytesIO(b"x,y\r1,2\n3,4\n"), options=IngestOptions(target="y"), limits=Limits()
        )


def test_a_feature_listed_twice_is_refused_naming_it():
    with pytest.raises(ValidationError, match="feature 'x' is listed twice"):
        DatasetOptions(target="y", features=["x", "x"])
