"""Acceptance tier: each test starts from an empty database."""

import pytest


@pytest.fixture(autouse=True)
def _empty(empty_database: None) -> None:
    """Every test sees only the rows it writes."""
