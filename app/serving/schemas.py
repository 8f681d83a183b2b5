"""Request and response bodies of the predict endpoints."""

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.ids import Id
from app.registry.schemas import MODEL_REF_PATTERN

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class PredictInputs(BaseModel):
    """Rows to predict: lists in the training feature order, or records keyed by feature name."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"inputs": [[1.0, 1.0]]}, {"records": [{"x0": 1.0, "x1": 1.0}]}]
        },
    )

    inputs: list[list[FiniteFloat]] | None = Field(
        None, min_length=1, description="One list of feature values per row."
    )
    records: list[dict[str, FiniteFloat]] | None = Field(
        None,
        min_length=1,
        description="One object per row, keyed by the feature names of a model trained on a "
        "stored dataset.",
    )

    @model_validator(mode="after")
    def _inputs_or_records(self) -> Self:
        if (self.inputs is None) == (self.records is None):
            raise ValueError("send exactly one of inputs or records")
        return self


class PredictRequest(PredictInputs):
    """Rows to predict with a given run's weights or a registered model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"run_id": 1, "inputs": [[1.0, 1.0]]},
                {"model": "house-prices@production", "inputs": [[1.0, 1.0]]},
            ]
        },
    )

    run_id: Id | None = Field(None, description="The run whose weights answer.")
    model: str | None = Field(
        None,
        pattern=MODEL_REF_PATTERN,
        description="A registered model: `name` (latest version), `name@alias` or `name:3`.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.run_id is None) == (self.model is None):
            raise ValueError("give exactly one of run_id and model")
        return self


class PredictResponse(BaseModel):
    """Predictions, and for classification the class probabilities in `classes` order."""

    run_id: int = Field(description="The run whose weights answered.")
    weights_sha256: str = Field(description="Digest of the weights that answered.")
    model: str | None = Field(None, description="The model name, when called by name.")
    version: int | None = Field(None, description="The version that answered, when by name.")
    predictions: list[Any] = Field(description="Values (regression) or labels (classification).")
    classes: list[Any] | None = None
    probabilities: list[list[float]] | None = None
