"""Fuzz tier: schemathesis over a live server's /openapi.json, on the suite's test database.

Run it with `pytest tests/fuzz -m fuzz`; the default run deselects the `fuzz` marker.
"""

import shutil
import tempfile
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import GenerationMode
from schemathesis.config import HealthCheck
from schemathesis.specs.openapi.schemas import OpenApiSchema

from app.config import Settings
from app.database import Database
from app.keys import flows as key_flows
from app.main import create_app
from app.principal import Principal, Role
from tests.helpers import ApiServer

# Examples per operation in the fuzzing phase, drawn from positive and negative data alike;
# the examples and coverage phases add their own cases on top. The tier's time follows it:
# at 50 a passing tier takes about 40 s on two cores, against its 4-minute CI budget.
MAX_EXAMPLES = 50
# A fixed seed: every run sends the same requests, so a CI failure reproduces locally.
SEED = 20240601
# A request that takes longer than this fails the case instead of stalling CI.
REQUEST_TIMEOUT_SECONDS = 10


_HYPOTHESIS_HOME = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Keep Hypothesis' caches out of the repository.

    Hypothesis writes `.hypothesis/` under the working directory: while collecting any test
    it takes for its own (the fuzz test, even when `-m 'not fuzz'` deselects it) it caches
    the constants of local modules there. A temporary folder takes it instead.
    """
    home = tempfile.mkdtemp(prefix="fitserve-hypothesis-")
    config.stash[_HYPOTHESIS_HOME] = home
    set_hypothesis_home_dir(home)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary Hypothesis folder."""
    home = config.stash.get(_HYPOTHESIS_HOME, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Give the test item the `_nodeid` attribute schemathesis' lazy loader reads and rewrites.

    schemathesis 4.32 (`pytest/lazy.py`) relabels the item through `node._nodeid`, which
    pytest 9 no longer has, so every `from_fixture` test fails with an AttributeError
    without this. Drop it once schemathesis supports pytest 9's node ids.
    """
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="session")
def fuzz_headers(settings: Settings) -> dict[str, str]:
    """Headers every fuzz request carries, the schema request included: an admin key."""
    database = Database.connect(settings.database_url)
    try:
        _row, key = key_flows.create_key(
            database=database,
            project="fuzz",
            role=Role.ADMIN,
            label="schemathesis",
            principal=Principal(project="fuzz", role=Role.ADMIN, address="tests"),
        )
    finally:
        database.dispose()
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def fuzz_api(settings: Settings) -> Iterator[ApiServer]:
    """A live API with auth required, on the suite's migrated test database.

    No worker runs and nothing is woken: a created run only becomes a queued row, so a flood
    of POST /runs costs one insert each and never trains.
    """
    with ApiServer(create_app(settings.model_copy(update={"auth": "required"}))) as server:
        yield server


@pytest.fixture(scope="session")
def fuzz_schema(fuzz_api: ApiServer, fuzz_headers: dict[str, str]) -> OpenApiSchema:
    """The live server's schema, set up for a reproducible run within the CI budget."""
    # An explicit config rather than discovery: a schemathesis.toml must not change CI.
    # `too_slow` measures generation time, so a slow CI machine could fail where a fast one
    # passes; the same seed must give the same verdict everywhere.
    config = schemathesis.Config(seed=SEED, suppress_health_check=[HealthCheck.too_slow])
    schema = schemathesis.openapi.from_url(
        f"{fuzz_api.url}/openapi.json",
        config=config,
        headers=fuzz_headers,
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    schema.config.update(
        base_url=fuzz_api.url, headers=fuzz_headers, request_timeout=REQUEST_TIMEOUT_SECONDS
    )
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=MAX_EXAMPLES,
        # No example database: nothing is read from or written to disk between runs.
        database="none",
        # Every request carries the key from `fuzz_headers`; made-up keys would only meet
        # the 401 in front of the handlers (the key check has tests of its own).
        with_security_parameters=False,
    )
    return schema
