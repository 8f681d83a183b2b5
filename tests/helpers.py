"""Test helpers: real worker processes and waiting on run states with deadlines."""

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing import forkserver
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import make_url, select, text, update

from app.config import RunFaults, Settings
from app.database import make_engine, utcnow
from app.runs.models import Checkpoint, Run
from app.worker.models import WorkerRecord
from app.worker.pool import new_worker_id
from tests.specs import D2L_SPEC as D2L_SPEC
from tests.worker_process import run_test_worker

FINAL = {"succeeded", "failed", "cancelled"}


def long_spec(epochs: int = 6, **overrides: Any) -> dict[str, Any]:
    """A seeded MLP run with dropout and enough batches per epoch to be interrupted."""
    return {
        "dataset": {"type": "synthetic_classification", "n_samples": 2000, "n_features": 8},
        "model": {"type": "mlp", "hidden": [32, 32], "dropout": 0.1},
        "optimizer": {"type": "adam", "lr": 0.01},
        "epochs": epochs,
        "batch_size": 16,
        "seed": 7,
        **overrides,
    }


# The bucket the `s3_endpoint` fixture creates in moto's server.
S3_BUCKET = "fitserve-tests"


def storage_env(settings: Settings) -> dict[str, str]:
    """The environment that points a `fitserve` subprocess at the tests' database and store."""
    env = {"FITSERVE_DATABASE_URL": settings.database_url}
    if settings.artifacts:
        env["FITSERVE_ARTIFACTS"] = settings.artifacts
    if settings.artifact_cache_dir:
        env["FITSERVE_ARTIFACT_CACHE_DIR"] = settings.artifact_cache_dir
    return env


def free_port() -> int:
    """A loopback TCP port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ApiServer:
    """Serves an app with uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> "ApiServer":
        self._thread.start()
        wait_until(lambda: self._server.started, timeout=15, message="API server started")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()
        self.app.state.database.dispose()


# The test workers' fork server: it imports the worker stack and warms torch up once, so a
# worker starts in milliseconds instead of seconds. Production's spawn path stays covered by
# the supervisor (`fitserve worker`/`serve`) and Ray tests.
WORKER_SERVER = multiprocessing.get_context("forkserver")
WORKER_SERVER.set_forkserver_preload(["tests.worker_preload"])
# Faults that end the worker process itself, by SIGKILL.
KILLING_FAULTS = {"kill_at_epoch", "kill_before_commit_at_epoch"}


def start_worker_server() -> None:
    """Start the fork server with this checkout importable, whatever the working directory.

    Python 3.11's fork server ignores the parent's sys.path, so `tests` must be found on
    PYTHONPATH; the variable is set only while the server starts.
    """
    root = str(Path(__file__).resolve().parent.parent)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.getenv("PYTHONPATH")])))
        forkserver.ensure_running()


@dataclass
class WorkerHandle:
    """One worker process, and the file its log goes to."""

    worker_id: str
    process: BaseProcess
    log: Path
    # Whether the test means this worker to die other than by a graceful stop.
    may_die: bool = False

    def kill(self) -> None:
        """SIGKILL, like a machine losing power."""
        self.may_die = True
        os.kill(self.process.pid or 0, signal.SIGKILL)
        self.process.join(10)

    def terminate(self) -> None:
        """SIGTERM, like an orchestrator stopping the container."""
        self.process.terminate()

    def logged(self) -> str:
        """What the worker has logged so far."""
        return self.log.read_text(errors="replace")


class LocalWorkers:
    """Real worker processes running the entry point `fitserve` uses, forked pre-warmed."""

    def __init__(self, settings: Settings, semaphore: Any, log_dir: Path) -> None:
        self.settings = settings
        self.semaphore = semaphore
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.handles: list[WorkerHandle] = []
        # A test starts from an empty wake-up semaphore: a permit left by an earlier test
        # would wake a worker that the announcement under test failed to wake.
        while semaphore.acquire(False):
            pass

    def start(
        self,
        device: str = "cpu",
        faults: dict[int, dict[str, Any]] | None = None,
        pool_wakeup: bool = True,
        **overrides: Any,
    ) -> WorkerHandle:
        """Start a worker; `faults` by run id are injected, overrides change its settings.

        Without `pool_wakeup` the worker does not share the API's wake-up semaphore, as a
        worker on another machine would not.
        """
        if faults:
            overrides["test_faults"] = {
                run_id: RunFaults.model_validate(fault) for run_id, fault in faults.items()
            }
        settings = self.settings.model_copy(update=overrides)
        worker_id = new_worker_id(device)
        log = self.log_dir / f"worker-{len(self.handles)}.log"
        process = WORKER_SERVER.Process(
            target=run_test_worker,
            # Not a daemon, which could not start a data-parallel run's processes; it still
            # dies with the fork server, which dies with this process.
            args=(
                settings,
                worker_id,
                device,
                self.semaphore if pool_wakeup else None,
                dict(os.environ),
                str(log),
            ),
        )
        process.start()
        killing = any(KILLING_FAULTS & fault.keys() for fault in (faults or {}).values())
        handle = WorkerHandle(worker_id, process, log, may_die=killing)
        self.handles.append(handle)
        return handle

    def expire(self, handle: WorkerHandle) -> None:
        """Once `handle` has died, move the clock past its leases and its last heartbeat.

        The next worker's reaper then takes its runs and retires it at once, as it would a
        lease's length later.
        """
        wait_until(lambda: handle.process.exitcode is not None, message="the worker dead")
        age = timedelta(seconds=self.settings.lease_seconds + 1)
        engine = make_engine(self.settings.database_url)
        try:
            with engine.begin() as connection:
                connection.execute(
                    update(Run)
                    .where(Run.worker_id == handle.worker_id)
                    .values(lease_expires_at=utcnow() - age)
                )
                connection.execute(
                    update(WorkerRecord)
                    .where(WorkerRecord.id == handle.worker_id)
                    .values(heartbeat_at=utcnow() - age)
                )
        finally:
            engine.dispose()

    def stop_all(self) -> None:
        """Stop every worker still running, gracefully, then by force; then check exit codes.

        A worker that crashed, or did not stop in time, fails the test even after the
        test's own assertions passed.
        """
        for handle in self.handles:
            if handle.process.is_alive():
                handle.process.terminate()
        failures = []
        for handle in self.handles:
            handle.process.join(20)
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join()
                failures.append(f"{handle.worker_id} did not stop in 20 s")
            elif handle.process.exitcode != 0 and not handle.may_die:
                failures.append(f"{handle.worker_id} exited with {handle.process.exitcode}")
        if failures:
            logs = "\n".join(
                f"--- {handle.log.name}\n{handle.logged()[-4000:]}" for handle in self.handles
            )
            raise AssertionError("; ".join(failures) + "\n" + logs)


class Pause:
    """A worker stopped after a given epoch of a run's first attempt (a test fault).

    It waits there until `release`, or until its attempt is interrupted (stopped,
    cancelled, fenced): the test acts on a worker at a known point instead of racing it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def after_epoch(self, epoch: int) -> dict[str, Any]:
        """The faults that pause there."""
        return {"pause_after_epoch": epoch, "pause_dir": str(self.folder)}

    def in_epoch(self, epoch: int) -> dict[str, Any]:
        """The faults that pause halfway through an epoch, before its middle batch."""
        return {"pause_in_epoch": epoch, "pause_dir": str(self.folder)}

    def wait(self) -> None:
        """Return once the worker has paused."""
        wait_until(lambda: (self.folder / "paused").exists(), message="the worker paused")

    def release(self) -> None:
        """Let the worker go on."""
        (self.folder / "resume").touch()


def wait_for(
    client: httpx.Client, run_id: int, statuses: set[str] = FINAL, timeout: float = 60
) -> dict[str, Any]:
    """Poll a run until its status is one of `statuses`; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s: {run}")
        time.sleep(0.05)


def wait_until(predicate: Any, timeout: float = 30, message: str = "condition") -> Any:
    """Poll a predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met after {timeout}s")
        time.sleep(0.05)


def post_run(client: httpx.Client, spec: dict[str, Any], **headers: str) -> dict[str, Any]:
    """Create a run and return its body, asserting it was accepted."""
    response = client.post("/runs", json=spec, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


class ApiProcess:
    """`fitserve api` as a subprocess: an API process of its own, as on another machine."""

    def __init__(self, settings: Settings, log: Path | None = None, **env_overrides: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            **storage_env(settings),
            "FITSERVE_PORT": str(port),
            "FITSERVE_LOG_LEVEL": "WARNING",
            **env_overrides,
        }
        fitserve = Path(sys.executable).with_name("fitserve")
        # stderr to `log` when given, for a test that reads what the process logged.
        self._log = log.open("wb") if log is not None else None
        self.process = subprocess.Popen([str(fitserve), "api"], env=env, stderr=self._log)

    def __enter__(self) -> "ApiProcess":
        def answers() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=30, message="API process answering")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()


def epochs_of(client: httpx.Client, run_id: int) -> list[dict[str, Any]]:
    """The run's epoch rows as the API lists them."""
    return client.get(f"/runs/{run_id}/epochs").json()


def assert_epochs_once(client: httpx.Client, run_id: int, epochs: int) -> list[dict[str, Any]]:
    """Assert the run recorded epochs 1..epochs, each once; return the rows."""
    rows = epochs_of(client, run_id)
    assert [row["epoch"] for row in rows] == list(range(1, epochs + 1))
    return rows


def checkpoint_position(settings: Settings, run_id: int) -> tuple[int, int, int]:
    """The run's checkpoint as (attempt, epochs done, batches done in the next epoch)."""
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                select(Checkpoint.attempt, Checkpoint.epoch, Checkpoint.batch).where(
                    Checkpoint.run_id == run_id
                )
            ).one()
    finally:
        engine.dispose()
    return row.attempt, row.epoch, row.batch


def allow_connections(database_url: str, *, allowed: bool) -> None:
    """Let a PostgreSQL database take connections, or refuse new ones and end every open one."""
    url = make_url(database_url)
    # From the maintenance database: no session may refuse its own database.
    engine = make_engine(url.set(database="postgres").render_as_string(hide_password=False))
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(
                text(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            )
            if not allowed:
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name"
                    ),
                    {"name": url.database},
                )
    finally:
        engine.dispose()
