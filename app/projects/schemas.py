"""Project names and quotas as the API reads and writes them."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Quota(BaseModel):
    """Limits of one project; null is no limit."""

    model_config = ConfigDict(from_attributes=True, extra="forbid")

    max_queued_runs: int | None = Field(None, ge=0, le=1_000_000)
    max_running_runs: int | None = Field(None, ge=0, le=1_000_000)
    max_dataset_bytes: int | None = Field(None, ge=0, le=2**62)
    max_rows_x_epochs: int | None = Field(
        None, ge=0, le=2**62, description="Rows times epochs of any one run."
    )


class ProjectRead(BaseModel):
    """A project and its quota."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    created_at: datetime
    quota: Quota
