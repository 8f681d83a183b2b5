"""Who is asking: the project and role of a request's API key, and where it came from.

Every domain scopes its reads and writes to `Principal.project`; the routers require a role.
"""

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Annotated

from pydantic import Field

DEFAULT_PROJECT = "default"
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
ProjectName = Annotated[
    str, Field(pattern=PROJECT_PATTERN, description="Lower-case letters, digits, `_ . -`.")
]


class Role(StrEnum):
    """What a key may do; each role includes the ones before it."""

    PREDICT = "predict"
    TRAIN = "train"
    ADMIN = "admin"

    def allows(self, needed: "Role") -> bool:
        """Whether this role includes `needed`."""
        return ROLE_RANK[self] >= ROLE_RANK[needed]


ROLE_RANK = {Role.PREDICT: 0, Role.TRAIN: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """The caller: its project and role, the key it used (None when auth is off), its address."""

    project: str
    role: Role
    key_id: int | None = None
    address: str | None = None

    def at(self, address: str | None) -> "Principal":
        """The same caller, seen at `address`."""
        return replace(self, address=address)


# Who acts when auth is off (a loopback bind with no key yet, or FITSERVE_AUTH=off).
OPEN_ACCESS = Principal(project=DEFAULT_PROJECT, role=Role.ADMIN)
