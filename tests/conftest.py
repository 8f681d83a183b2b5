"""Fixtures shared by the service and acceptance tiers: a real database (a SQLite file, or
TEST_DATABASE_URL), a real API server and real worker processes."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fsspec.core import url_to_fs
from sqlalchemy import text

from app.artifacts.store import ArtifactStore, open_store
from app.cli import upgrade_database
from app.config import Settings
from app.database import make_engine
from app.main import create_app
from app.worker.pool import SPAWN
from tests.helpers import (
    S3_BUCKET,
    ApiServer,
    LocalWorkers,
    allow_connections,
    free_port,
    start_worker_server,
    wait_until,
)


def _execute(database_url: str, *statements: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty database: TEST_DATABASE_URL if set, else a fresh SQLite file."""
    url = os.environ.get("TEST_DATABASE_URL") or (
        f"sqlite:///{Path(tmp_path_factory.mktemp('db')) / 'fitserve.db'}"
    )
    if url.startswith("postgresql"):
        # A session killed during the outage test must not leave the database refusing us.
        allow_connections(url, allowed=True)
        _execute(url, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    upgrade_database(Settings(database_url=url, artifacts=str(tmp_path_factory.mktemp("store"))))
    return url


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings tuned for tests: short polls and beats, and auth off unless a test turns it on.

    The lease is production's: a test that needs one to run out moves the clock instead
    (`LocalWorkers.expire`), so slow beats on a loaded machine never lose a lease.
    """
    return Settings(
        database_url=database_url,
        artifacts=str(tmp_path_factory.mktemp("artifacts")),
        artifact_cache_dir=str(tmp_path_factory.mktemp("artifact-cache")),
        auth="off",
        devices=["cpu"],
        # Several workers share the machine's two cores in some tests.
        torch_threads=1,
        sqlite_busy_timeout_seconds=1.0,
        heartbeat_seconds=0.25,
        poll_seconds=0.25,
        shutdown_grace_seconds=15.0,
    )


@pytest.fixture(scope="session")
def store(settings: Settings) -> ArtifactStore:
    """The artifact store the tests' API and workers use."""
    return open_store(settings)


S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's standalone S3 server on loopback, with the tests' bucket, once per session."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, timeout=30, message="moto server answering")
        with pytest.MonkeyPatch.context() as patch:
            for name, value in {**S3_ENVIRONMENT, "AWS_ENDPOINT_URL": url}.items():
                patch.setenv(name, value)
            url_to_fs(f"s3://{S3_BUCKET}", skip_instance_cache=True)[0].mkdir(S3_BUCKET)
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def s3_endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto's S3 server, with credentials set the usual AWS way for this test only.

    s3fs finds the server through them in this process, and in the worker processes and
    commands the test starts; they are gone after the test.
    """
    for name, value in {**S3_ENVIRONMENT, "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def empty_database(settings: Settings) -> None:
    """Delete every row the tests write, keeping the schema."""
    _execute(
        settings.database_url,
        # Registered versions hold on to their runs; the bump drops cached resolutions.
        "DELETE FROM registered_models",
        "UPDATE registry_state SET generation = generation + 1",
        "DELETE FROM sweeps",
        "DELETE FROM runs",
        "DELETE FROM workers",
        "DELETE FROM datasets",
        "DELETE FROM artifacts",
        "DELETE FROM api_keys",
        "DELETE FROM projects WHERE name <> 'default'",
        "UPDATE projects SET max_queued_runs = NULL, max_running_runs = NULL, "
        "max_dataset_bytes = NULL, max_rows_x_epochs = NULL",
    )


@pytest.fixture(scope="session")
def semaphore() -> object:
    """The wake-up semaphore the API and local workers share, as in `fitserve serve`."""
    return SPAWN.Semaphore(0)


@pytest.fixture(scope="session")
def api(settings: Settings, semaphore: object) -> Iterator[ApiServer]:
    """A real uvicorn server on a loopback port; this process never trains."""
    with ApiServer(create_app(settings, wakeup=semaphore.release)) as server:  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    """An httpx client talking to the API over TCP."""
    with httpx.Client(base_url=api.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
def worker_server() -> None:
    """The fork server that test workers start from, started once per session."""
    start_worker_server()


@pytest.fixture
def workers(
    settings: Settings, semaphore: object, worker_server: None, tmp_path: Path
) -> Iterator[LocalWorkers]:
    """Start, kill and stop real worker processes; all are stopped after the test."""
    pool = LocalWorkers(settings, semaphore, tmp_path / "worker-logs")
    yield pool
    pool.stop_all()
