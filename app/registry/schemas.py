"""Request and response bodies of the registry API."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.ids import MAX_ID, Id

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
ALIAS_PATTERN = r"[A-Za-z][A-Za-z0-9_-]{0,63}"
MODEL_REF_PATTERN = rf"^{NAME_PATTERN}(@{ALIAS_PATTERN}|:[1-9][0-9]{{0,8}})?$"


class RegisterRequest(BaseModel):
    """Register a succeeded run as the next version of a named model."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "house-prices", "run_id": 1}]}
    )

    name: str = Field(pattern=f"^{NAME_PATTERN}$", description="Created on first registration.")
    run_id: Id = Field(description="A succeeded run; its weights become the version.")


class AliasRequest(BaseModel):
    """Point an alias at a version."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 1}]})

    version: int = Field(ge=1, le=MAX_ID)


class VersionRead(BaseModel):
    """One version of a model and the run it came from."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    version: int
    run_id: int
    weights_sha256: str
    created_at: datetime


class VersionDetail(BaseModel):
    """A version with its source run's task and final metrics, and its aliases."""

    version: int
    run_id: int
    weights_sha256: str
    created_at: datetime
    task: str
    metrics: dict[str, Any] | None
    aliases: list[str]


class ModelSummary(BaseModel):
    """A model's name, latest version and aliases."""

    name: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int] = Field(description="Alias to version.")


class ModelRead(ModelSummary):
    """A model with every version, oldest first."""

    versions: list[VersionDetail]


class AliasRead(BaseModel):
    """Where an alias points now."""

    name: str
    alias: str
    version: int
    run_id: int
