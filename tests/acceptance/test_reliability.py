"""Crashes, stale workers, shutdowns and contention, with real processes and a real database.

Faults are injected deterministically through the workers' test hook (FITSERVE_TEST_FAULTS,
by run id): a worker SIGKILLs itself halfway through a given epoch, stops renewing its
lease, runs out of memory, or lingers after each epoch.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text, update

from app.config import Settings
from app.database import make_engine, make_session_factory, unit_of_work, utcnow
from app.runs import records
from app.runs.models import Run
from app.training.evaluation import EpochReport
from app.worker import queue
from tests.helpers import (
    D2L_SPEC,
    LocalWorkers,
    Pause,
    allow_connections,
    assert_epochs_once,
    checkpoint_position,
    epochs_of,
    free_port,
    long_spec,
    post_run,
    storage_env,
    wait_for,
    wait_until,
)


def weights_sha(client: httpx.Client, run_id: int) -> str:
    return client.get(f"/runs/{run_id}/weights").json()["sha256"]


class WorkerCommand:
    """`fitserve worker` (or `serve`) as a subprocess: the real supervisor and its pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        slots: int = 1,
        faults: dict[int, dict] | None = None,
        command: str = "worker",
        **env_overrides: str,
    ) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            **storage_env(self.settings),
            "FITSERVE_DEVICES": ",".join(["cpu"] * slots),
            "FITSERVE_LEASE_SECONDS": str(self.settings.lease_seconds),
            "FITSERVE_SQLITE_BUSY_TIMEOUT_SECONDS": str(self.settings.sqlite_busy_timeout_seconds),
            "FITSERVE_HEARTBEAT_SECONDS": str(self.settings.heartbeat_seconds),
            "FITSERVE_POLL_SECONDS": str(self.settings.poll_seconds),
            "FITSERVE_LOG_LEVEL": "WARNING",
            "FITSERVE_TEST_FAULTS": json.dumps(faults or {}),
            **env_overrides,
        }
        fitserve = Path(sys.executable).with_name("fitserve")
        process = subprocess.Popen([str(fitserve), command], env=env)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def pause(tmp_path: Path) -> Pause:
    """Pause a worker at a named point: see tests.helpers.Pause."""
    return Pause(tmp_path)


@pytest.fixture
def worker_command(settings: Settings) -> Iterator[WorkerCommand]:
    command = WorkerCommand(settings)
    yield command
    command.stop_all()


def test_kill_9_mid_epoch_resumes_from_the_checkpoint_with_identical_weights(
    client: httpx.Client, workers: LocalWorkers
):
    reference = post_run(client, long_spec(epochs=4))
    crashing = post_run(client, long_spec(epochs=4))
    first = workers.start(faults={crashing["id"]: {"kill_at_epoch": 3}})
    wait_for(client, reference["id"])
    wait_until(lambda: first.process.exitcode is not None, message="worker killed itself")
    assert first.process.exitcode == -signal.SIGKILL

    workers.expire(first)
    second = workers.start()
    run = wait_for(client, crashing["id"], timeout=60)
    assert run["status"] == "succeeded", run
    assert (run["attempt"], run["lost_attempts"]) == (2, 1)
    rows = assert_epochs_once(client, run["id"], 4)
    assert [row["attempt"] for row in rows] == [1, 1, 2, 2]
    assert weights_sha(client, run["id"]) == weights_sha(client, reference["id"])
    # The killed worker stopped heartbeating and is no longer listed.
    assert [worker["id"] for worker in client.get("/workers").json()] == [second.worker_id]


def test_resume_redoes_the_epochs_past_a_lagging_checkpoint(
    client: httpx.Client, workers: LocalWorkers
):
    # Checkpoints every 2 epochs: the worker dies in epoch 4 with rows for epochs 1-3 but
    # a checkpoint from epoch 2, so the next attempt must drop epoch 3's row and redo it.
    reference = post_run(client, long_spec(epochs=5, checkpoint_every=2))
    lagging = post_run(client, long_spec(epochs=5, checkpoint_every=2))
    first = workers.start(faults={lagging["id"]: {"kill_at_epoch": 4}})
    wait_for(client, reference["id"])
    workers.expire(first)
    workers.start()
    run = wait_for(client, lagging["id"])
    assert run["status"] == "succeeded", run
    rows = assert_epochs_once(client, run["id"], 5)
    assert [row["attempt"] for row in rows] == [1, 1, 2, 2, 2]
    assert weights_sha(client, run["id"]) == weights_sha(client, reference["id"])


def _interrupt_the_database(database_url: str) -> None:
    """Take the database away from the workers for 2 s, without killing anyone."""
    if database_url.startswith("postgresql"):
        # Refuse new connections and end every open one, as a server restarting does;
        # without the refusal the pool's pre-ping would reconnect at once, unnoticed.
        allow_connections(database_url, allowed=False)
        try:
            time.sleep(2.0)
        finally:
            allow_connections(database_url, allowed=True)
        return
    # SQLite: hold the write lock for twice the busy timeout (and less than the lease), so
    # the worker's heartbeats and its epoch write fail with "database is locked".
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE registry_state SET generation = generation"))
            time.sleep(2.0)
    finally:
        engine.dispose()


# What a worker logs when a write fails for want of the database, and it retries.
FAILED_WRITE = re.compile(r"run \d+: database unavailable|heartbeat for run \d+ failed; retrying")


def test_a_database_outage_mid_run_costs_no_attempt(
    client: httpx.Client, workers: LocalWorkers, settings: Settings
):
    assert settings.sqlite_busy_timeout_seconds * 2 < settings.lease_seconds
    run = post_run(client, long_spec(epochs=4))
    worker = workers.start(faults={run["id"]: {"epoch_sleep_seconds": 0.3}})
    wait_until(lambda: client.get(f"/runs/{run['id']}").json()["progress"]["epoch"] >= 1)
    _interrupt_the_database(settings.database_url)
    finished = wait_for(client, run["id"])
    assert finished["status"] == "succeeded", finished
    # The worker met the outage: a write failed and was retried.
    assert FAILED_WRITE.search(worker.logged()), worker.logged()
    # The worker kept its lease through the outage: the run never changed hands.
    assert (finished["attempt"], finished["lost_attempts"]) == (1, 0)
    assert {row["attempt"] for row in assert_epochs_once(client, run["id"], 4)} == {1}


def _expire_lease(database_url: str, run_id: int) -> None:
    """Move the clock past a run's lease, as if its worker had been silent that long."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
    finally:
        engine.dispose()


def test_stale_worker_is_fenced_and_cannot_change_the_run(
    client: httpx.Client, workers: LocalWorkers, settings: Settings, pause: Pause
):
    # Attempt 1 writes epoch 1, stops renewing its lease and waits; its lease runs out, a
    # second worker takes the run and finishes it; then attempt 1 goes on, and its next
    # write is refused.
    run = post_run(client, long_spec(epochs=3))
    faults = {"stall_heartbeat_on_attempts": 1, **pause.after_epoch(1)}
    stale = workers.start(faults={run["id"]: faults})
    pause.wait()
    _expire_lease(settings.database_url, run["id"])
    workers.start()
    finished = wait_for(client, run["id"])
    assert finished["status"] == "succeeded", finished
    assert (finished["attempt"], finished["lost_attempts"]) == (2, 1)
    rows = assert_epochs_once(client, run["id"], 3)
    assert [row["attempt"] for row in rows] == [1, 2, 2]
    weights = weights_sha(client, run["id"])

    pause.release()
    # The stale attempt trains epoch 2, is refused at its write, and its worker goes idle.
    wait_until(
        lambda: any(
            worker["id"] == stale.worker_id and worker["current_run_id"] is None
            for worker in client.get("/workers").json()
        ),
        message="the stale worker back to idle",
    )
    assert stale.process.is_alive()
    assert epochs_of(client, run["id"]) == rows
    assert weights_sha(client, run["id"]) == weights

    # A direct write with the stale attempt is refused outright, and the run is unchanged.
    engine = make_engine(settings.database_url)
    report = EpochReport(epoch=3, train_loss=123.0, val_loss=None, metrics={}, seconds=0.1)
    stale_claim = queue.Claim(run_id=run["id"], attempt=1, spec={}, epochs_total=3)
    try:
        with pytest.raises(queue.FencedError), unit_of_work(make_session_factory(engine)) as s:
            queue.fence(session=s, claim=stale_claim, epochs_done=3)
            records.add_epoch(session=s, run_id=run["id"], attempt=1, report=report)
    finally:
        engine.dispose()
    assert epochs_of(client, run["id"]) == rows
    assert client.get(f"/runs/{run['id']}").json()["status"] == "succeeded"


def test_poison_run_fails_as_worker_lost_and_the_others_succeed(
    client: httpx.Client, worker_command: WorkerCommand
):
    poison = post_run(client, long_spec(epochs=2, max_attempts=2))
    healthy = [post_run(client, {**D2L_SPEC, "seed": seed}) for seed in range(4)]
    worker_command.start(
        slots=2, faults={poison["id"]: {"kill_at_epoch": 1, "kill_on_attempts": 99}}
    )
    failed = wait_for(client, poison["id"], timeout=90)
    assert failed["status"] == "failed"
    assert failed["failure_kind"] == "worker_lost"
    assert failed["lost_attempts"] == 2
    for run in healthy:
        assert wait_for(client, run["id"])["status"] == "succeeded"
    # The pool replaced the killed workers: two live slots remain.
    wait_until(lambda: len(client.get("/workers").json()) == 2, message="two live workers")


# A worker paused before the middle batch of an epoch of long_spec (2,000 rows in batches of
# 16) takes that step, then stops at the next one.
STOPPED_AT_BATCH = -(-2000 // 16) // 2 + 1


def test_sigterm_mid_epoch_hands_the_run_back_and_a_restart_finishes_it(
    client: httpx.Client, worker_command: WorkerCommand, pause: Pause, settings: Settings
):
    reference = post_run(client, long_spec(epochs=3))
    run = post_run(client, long_spec(epochs=3))
    process = worker_command.start(faults={run["id"]: pause.in_epoch(2)})
    pause.wait()
    # The stop reaches the paused worker through its supervisor and ends the pause.
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    handed_back = client.get(f"/runs/{run['id']}").json()
    assert handed_back["status"] == "queued"
    assert (handed_back["attempt"], handed_back["lost_attempts"]) == (1, 0)
    assert client.get("/workers").json() == []
    # It stopped at the next batch, not at the end of the epoch, and checkpointed there.
    assert checkpoint_position(settings, run["id"]) == (1, 1, STOPPED_AT_BATCH)

    worker_command.start()
    finished = wait_for(client, run["id"], timeout=60)
    assert finished["status"] == "succeeded", finished
    assert (finished["attempt"], finished["lost_attempts"]) == (2, 0)
    assert [row["attempt"] for row in assert_epochs_once(client, run["id"], 3)] == [1, 2, 2]
    # Every batch was trained exactly once: the weights are those of an uninterrupted run.
    assert weights_sha(client, run["id"]) == weights_sha(client, reference["id"])


def test_fitserve_serve_stopped_mid_run_hands_it_back_then_kills_a_worker_that_hangs(
    client: httpx.Client,
    worker_command: WorkerCommand,
    pause: Pause,
    tmp_path: Path,
    settings: Settings,
):
    # `fitserve serve`: its own API on another port, and its worker pool.
    run = post_run(client, long_spec(epochs=5))
    serve = worker_command.start(
        faults={run["id"]: pause.after_epoch(1)}, command="serve", FITSERVE_PORT=str(free_port())
    )
    pause.wait()
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(30) == 0
    handed_back = client.get(f"/runs/{run['id']}").json()
    assert handed_back["status"] == "queued"
    assert (handed_back["attempt"], handed_back["lost_attempts"]) == (1, 0)
    assert client.get("/workers").json() == []

    # A worker that ignores the stop is killed once the grace period is over.
    stuck = Pause(tmp_path / "stuck")
    stuck.folder.mkdir()
    faults = {"pause_ignores_stop": True, **stuck.after_epoch(2)}
    serve = worker_command.start(
        faults={run["id"]: faults},
        command="serve",
        FITSERVE_PORT=str(free_port()),
        FITSERVE_SHUTDOWN_GRACE_SECONDS="1",
    )
    stuck.wait()
    [worker] = client.get("/workers").json()
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(30) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(worker["pid"], 0)
    # Its lease is left to run out (the clock is moved past it); the next worker resumes
    # from the epoch-2 checkpoint.
    _expire_lease(settings.database_url, run["id"])
    worker_command.start()
    finished = wait_for(client, run["id"])
    assert finished["status"] == "succeeded", finished
    rows = assert_epochs_once(client, run["id"], 5)
    assert [row["attempt"] for row in rows] == [1, 2, 3, 3, 3]


def test_a_killed_serve_takes_its_api_and_workers_with_it(
    client: httpx.Client, worker_command: WorkerCommand, pause: Pause
):
    run = post_run(client, long_spec(epochs=5))
    port = free_port()
    serve = worker_command.start(
        faults={run["id"]: pause.after_epoch(1)}, command="serve", FITSERVE_PORT=str(port)
    )
    pause.wait()
    [worker] = client.get("/workers").json()
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}"), timeout=30, message="serve's API up")
    # SIGKILL: the supervisor gets no chance to stop its children; the kernel tells them.
    serve.kill()
    serve.wait(10)

    handed_back = wait_for(client, run["id"], {"queued"}, timeout=30)
    assert (handed_back["attempt"], handed_back["lost_attempts"]) == (1, 0)
    wait_until(lambda: not _alive(worker["pid"]), timeout=30, message="the worker exited")
    wait_until(
        lambda: not _answers(f"http://127.0.0.1:{port}"), timeout=30, message="the API exited"
    )


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_mid_epoch_keeps_its_checkpoint_and_resume_continues(
    client: httpx.Client, workers: LocalWorkers, pause: Pause, settings: Settings
):
    reference = post_run(client, long_spec(epochs=4))
    run = post_run(client, long_spec(epochs=3))
    workers.start(faults={run["id"]: pause.in_epoch(2)})
    pause.wait()
    # The worker hears of the cancel at its next heartbeat, which ends the pause.
    assert client.post(f"/runs/{run['id']}/cancel").json()["status"] == "cancelling"
    cancelled = wait_for(client, run["id"], timeout=20)
    assert cancelled["status"] == "cancelled"
    assert cancelled["progress"]["epoch"] == 1
    assert checkpoint_position(settings, run["id"]) == (1, 1, STOPPED_AT_BATCH)

    resumed = client.post(f"/runs/{run['id']}/resume", json={"epochs": 4})
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    finished = wait_for(client, run["id"], timeout=60)
    assert finished["status"] == "succeeded", finished
    assert [row["attempt"] for row in assert_epochs_once(client, run["id"], 4)] == [1, 2, 2, 2]
    assert weights_sha(client, run["id"]) == weights_sha(client, reference["id"])


def test_out_of_memory_costs_an_attempt_and_is_never_blamed_on_the_input(
    client: httpx.Client, workers: LocalWorkers
):
    recovering = post_run(client, long_spec(epochs=2))
    exhausted = post_run(client, long_spec(epochs=2, max_attempts=2))
    workers.start(
        faults={
            recovering["id"]: {"out_of_memory_at_epoch": 1},
            exhausted["id"]: {"out_of_memory_at_epoch": 1, "out_of_memory_on_attempts": 99},
        }
    )
    run = wait_for(client, recovering["id"])
    assert run["status"] == "succeeded", run
    assert (run["attempt"], run["lost_attempts"]) == (2, 1)
    assert (run["failure_kind"], run["error"]) == (None, None)
    assert_epochs_once(client, run["id"], 2)

    failed = wait_for(client, exhausted["id"])
    assert (failed["status"], failed["failure_kind"]) == ("failed", "resources"), failed
    assert (failed["attempt"], failed["lost_attempts"]) == (2, 2)
    assert failed["error"].startswith("OutOfMemoryError: CUDA out of memory")


def test_divergence_and_timeout_fail_with_their_kind(client: httpx.Client, workers: LocalWorkers):
    diverging = post_run(client, {**D2L_SPEC, "optimizer": {"type": "sgd", "lr": 1e6}})
    slow = post_run(client, long_spec(epochs=50, max_seconds=0.5))
    workers.start()
    diverged = wait_for(client, diverging["id"])
    assert (diverged["status"], diverged["failure_kind"]) == ("failed", "diverged")
    assert "epoch 1" in diverged["error"]
    timed_out = wait_for(client, slow["id"])
    assert (timed_out["status"], timed_out["failure_kind"]) == ("failed", "timeout")
    assert "max_seconds" in timed_out["error"]


def test_many_workers_execute_every_run_exactly_once(client: httpx.Client, workers: LocalWorkers):
    spec = {**D2L_SPEC, "dataset": {**D2L_SPEC["dataset"], "n_samples": 200}, "epochs": 2}
    runs = [post_run(client, {**spec, "seed": seed}) for seed in range(40)]
    for _ in range(4):
        workers.start()
    finished = [wait_for(client, run["id"], timeout=120) for run in runs]
    assert {run["status"] for run in finished} == {"succeeded"}
    assert {run["attempt"] for run in finished} == {1}
    assert len({run["worker_id"] for run in finished}) > 1
    for run in finished:
        assert_epochs_once(client, run["id"], 2)
