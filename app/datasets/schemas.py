"""Request and response bodies of the datasets API."""

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.datasets.ingest import MissingPolicy
from app.training.spec import Task


class DatasetOptions(BaseModel):
    """How to read an upload: which column is the target, which are features, what to do on gaps."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=255, description="Default: the file name.")
    target: str = Field(min_length=1, description="The column to predict.")
    features: list[str] | None = Field(
        None, description="Feature columns in model order (default: every other column)."
    )
    missing: MissingPolicy = Field(
        "error",
        description="error: refuse missing values; drop: drop rows with any; mean: fill "
        "features with the column mean (rows missing the target are dropped).",
    )
    task: Task | None = Field(
        None,
        description="Default: classification for a text target, regression for a numeric one.",
    )
    delimiter: Literal[",", ";", "\t"] | None = Field(
        None, description="CSV delimiter; detected from the header when omitted."
    )

    @field_validator("features")
    @classmethod
    def _each_feature_once(cls, features: list[str] | None) -> list[str] | None:
        names = features or []
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"feature {name!r} is listed twice; list each column once")
        return features


class DatasetJSON(DatasetOptions):
    """A dataset sent as JSON: `records` (one object per row) or `columns` (one list per column)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "tiny",
                    "target": "y",
                    "records": [{"x": 1.0, "y": "a"}, {"x": 2.0, "y": "b"}],
                }
            ]
        },
    )

    records: list[dict[str, Any]] | None = None
    columns: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        if (self.records is None) == (self.columns is None):
            raise ValueError("send exactly one of records or columns")
        if self.columns is not None and not self.columns:
            raise ValueError("columns is empty; send at least one column")
        return self


class DatasetSummary(BaseModel):
    """A dataset as lists show it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    sha256: str = Field(description="Digest of the uploaded bytes.")
    format: str
    size_bytes: int
    task: Task
    target: str
    features: list[str]
    missing: MissingPolicy
    n_rows: int
    created_at: datetime


class StoredTable(BaseModel):
    """Where the stored table is: an Arrow IPC file in the artifact store."""

    model_config = ConfigDict(from_attributes=True)

    uri: str
    sha256: str
    size_bytes: int


class DatasetRead(DatasetSummary):
    """A dataset with its schema, per-column statistics and first rows."""

    artifact: StoredTable = Field(description="The stored table, as workers read it.")

    columns: list[dict[str, str]] = Field(description="name, Arrow type and role of each column.")
    stats: dict[str, dict[str, Any]] = Field(
        description="Per column: min, max, mean, std and missing count (before the missing "
        "policy); for a classification target, [label, count] pairs in `classes`."
    )
    preview: list[dict[str, Any]] = Field(description="The first 10 rows as stored.")


class DatasetPage(BaseModel):
    """One page of datasets, newest first."""

    items: list[DatasetSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class BuiltinRead(BaseModel):
    """A dataset shipped with fitserve; `POST /datasets/builtin/{name}` stores it."""

    name: str
    description: str
    target: str
    task: Task


class BuiltinPage(BaseModel):
    """The built-in datasets (one page: there are few)."""

    items: list[BuiltinRead]
    next_cursor: None = None
