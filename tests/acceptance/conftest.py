"""Acceptance tier: each test starts from an empty database."""

from collections.abc import Callable, Iterator

import pytest

from app.config import Settings
from app.database import Database
from app.keys import flows as key_flows
from app.main import create_app
from app.principal import Principal, Role
from tests.helpers import ApiServer

OPERATOR = Principal(project="default", role=Role.ADMIN, address="test")


@pytest.fixture(autouse=True)
def _empty(empty_database: None) -> None:
    """Every test sees only the rows it writes."""


@pytest.fixture(scope="module")
def secured(settings: Settings) -> Iterator[ApiServer]:
    """An API that requires a key on every request but /healthz and the docs."""
    with ApiServer(create_app(settings.model_copy(update={"auth": "required"}))) as server:
        yield server


@pytest.fixture
def make_key(settings: Settings) -> Iterator[Callable[[str, str], str]]:
    """Make a key for a project and role, as `fitserve keys create` does."""
    database = Database.connect(settings.database_url)

    def make(project: str, role: str) -> str:
        _row, key = key_flows.create_key(
            database=database, project=project, role=Role(role), label=None, principal=OPERATOR
        )
        return key

    yield make
    database.dispose()
