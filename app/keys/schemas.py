"""API keys as the API creates and lists them."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.principal import ProjectName, Role


class KeyRequest(BaseModel):
    """A key to create."""

    model_config = ConfigDict(extra="forbid")

    project: ProjectName
    role: Role
    label: str | None = Field(None, max_length=255)


class KeyRead(BaseModel):
    """A key without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    prefix: str
    project: str
    role: Role
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    """A new key: `key` is shown this once and never again."""

    key: str
