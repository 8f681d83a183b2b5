"""The Ray executor: claims runs from the same queue, with the same leases and fencing, and
trains each as a Ray task on whichever node of the cluster has the run's resources; a
data-parallel run is a Ray Train TorchTrainer whose rank 0 records, as a local worker does.

The executor renews the leases of the runs it submitted while their tasks wait for
resources or start; each task then heartbeats its own. A task whose process or node is
lost fails its `ray.get`: the run goes back to the queue at once and resumes from its last
checkpoint. If the executor itself dies, its leases run out and the runs resume elsewhere.
"""

import dataclasses
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import timedelta
from typing import Any

import ray
import torch
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.artifacts.store import open_store
from app.config import Settings
from app.database import Database, unit_of_work, utcnow
from app.runs.models import FailureKind
from app.sweeps import flows as sweeps
from app.training.engine import Replica
from app.training.spec import RunSpec
from app.worker import queue
from app.worker.attempt import ExecutionContext, ReplicaLauncher, RunExecution, WorkerSettings
from app.worker.failures import describe
from app.worker.models import WorkerRecord
from app.worker.replicas import ReplicaLostError, follow, is_collective_failure
from app.worker.threads import supervised
from app.worker.wakeups import Wakeup, start_wake_relays

logger = logging.getLogger("fitserve.ray")
NAMESPACE = "fitserve"
EXECUTOR = "ray"


def node_worker_id(node_id: str) -> str:
    """The workers-table id of a Ray node."""
    return f"ray/{node_id[:16]}"


@ray.remote(num_cpus=0)
class StopSignal:
    """Set when the executor stops: its tasks hand their runs back at the next batch."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Ask every task to stop."""
        self._set = True

    def is_set(self) -> bool:
        """Whether the executor is stopping."""
        return self._set


@dataclasses.dataclass
class _Submitted:
    claim: queue.Claim
    cpus: float
    gpus: float
    # False once the run has left this attempt (finished, fenced): no more renewals.
    held: bool = True


class RayExecutor:
    """Claims runs while the cluster has room and trains each as a Ray task; stops gracefully."""

    def __init__(self, settings: Settings, *, wakeup: Wakeup | None = None) -> None:
        self.settings = settings.anchored()
        self.executor_id = f"{socket.gethostname()}/ray/{uuid.uuid4().hex[:8]}"
        self.stop_requested = threading.Event()
        self._wake = threading.Event()
        self._wakeup = wakeup
        self._submitted: dict[ray.ObjectRef, _Submitted] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.database = Database.connect(
            self.settings.database_url,
            sqlite_busy_timeout=self.settings.sqlite_busy_timeout_seconds,
        )

    def request_stop(self) -> None:
        """Stop claiming, let the tasks hand their runs back, and exit."""
        self.stop_requested.set()
        self._wake.set()

    def run(self) -> None:
        """Join (or start) the Ray cluster and claim, submit and watch runs until stopped."""
        settings = self.settings
        ray.init(
            address=settings.ray_address,
            namespace=NAMESPACE,
            num_cpus=None if settings.ray_address else settings.ray_num_cpus,
            include_dashboard=False,
            configure_logging=False,
        )
        # ray.remote makes the class an actor class; its stubs do not say so.
        stop_signal = StopSignal.remote()  # type: ignore[attr-defined]
        self._start_wake_sources()
        try:
            while not self.stop_requested.is_set():
                try:
                    self._collect(timeout=0)
                    self._maintain()
                    if not self.stop_requested.is_set():
                        self._claim_while_room(stop_signal)
                except DBAPIError:
                    # An unreachable database is waited out; the tasks retry their own writes.
                    logger.warning("database unavailable; retrying", exc_info=True)
                self._wake.wait(settings.poll_seconds)
                self._wake.clear()
        finally:
            self.stop_requested.set()
            self._drain(stop_signal)
            for thread in self._threads:
                thread.join(timeout=2)
            self.database.dispose()
            ray.shutdown()

    def _maintain(self) -> None:
        """Heartbeat the cluster's nodes, renew submitted leases, reap, retire."""
        since = utcnow() - timedelta(seconds=self.settings.lease_seconds)
        with unit_of_work(self.database.sessions) as session:
            for node in ray.nodes():
                resources = node.get("Resources", {})
                worker_id = node_worker_id(node["NodeID"])
                if not node["Alive"]:
                    queue.unregister_worker(session=session, worker_id=worker_id)
                    continue
                queue.heartbeat_node(
                    session=session,
                    record=WorkerRecord(
                        id=worker_id,
                        pid=0,
                        host=node.get("NodeManagerHostname") or node["NodeManagerAddress"],
                        device="cuda" if resources.get("GPU") else "cpu",
                        executor=EXECUTOR,
                        started_at=utcnow(),
                        heartbeat_at=utcnow(),
                        stopped_at=None,
                        current_run_id=None,
                    ),
                )
            self._renew_leases(session)
            queue.reap_expired(session=session)
            queue.retire_silent_workers(session=session, silent_since=since)
            queue.fail_unservable(
                session=session,
                live_devices=queue.live_worker_devices(session=session, since=since),
            )
        sweeps.advance_sweeps(database=self.database, settings=self.settings)

    def _renew_leases(self, session: Session) -> None:
        with self._lock:
            held = [entry for entry in self._submitted.values() if entry.held]
        for entry in held:
            # A refused renewal changes nothing, so the transaction goes on.
            try:
                queue.renew_lease(
                    session=session, claim=entry.claim, lease_seconds=self.settings.lease_seconds
                )
            except queue.FencedError:
                entry.held = False

    def _claim_while_room(self, stop_signal: ActorHandle) -> None:
        cluster = ray.cluster_resources()
        while True:
            with self._lock:
                cpus = sum(entry.cpus for entry in self._submitted.values())
                gpus = sum(entry.gpus for entry in self._submitted.values())
            devices = ["cuda"] if gpus < cluster.get("GPU", 0) else []
            if cpus < cluster.get("CPU", 0):
                devices.append("cpu")
            claim, device = None, None
            with unit_of_work(self.database.sessions) as session:
                for device in devices:
                    claim = queue.claim_next(
                        session=session,
                        worker_id=self.executor_id,
                        device=device,
                        lease_seconds=self.settings.lease_seconds,
                        executor=EXECUTOR,
                    )
                    if claim is not None:
                        break
            if claim is None or device is None:
                return
            self._submit(claim, device, stop_signal)

    def _submit(self, claim: queue.Claim, device: str, stop_signal: ActorHandle) -> None:
        workers = RunSpec.model_validate(claim.spec).resources.workers
        gpus = float(workers) if device == "cuda" else 0.0
        if workers == 1:
            ref = execute_run.options(num_cpus=1, num_gpus=gpus).remote(
                self.settings, claim, stop_signal
            )
        else:
            # The launcher only waits for its TorchTrainer; the ranks hold the resources.
            ref = train_data_parallel.remote(self.settings, claim, stop_signal, device)
        logger.info("run %s attempt %s submitted to Ray", claim.run_id, claim.attempt)
        with self._lock:
            self._submitted[ref] = _Submitted(claim=claim, cpus=float(workers), gpus=gpus)

    def _collect(self, *, timeout: float) -> None:
        """Deal with finished tasks: a lost one's run goes back to the queue at once."""
        with self._lock:
            refs = list(self._submitted)
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
        for ref in ready:
            with self._lock:
                entry = self._submitted.pop(ref)
            try:
                failure = ray.get(ref)
            except RayError as error:
                failure = f"the Ray task was lost: {type(error).__name__}"
                self._requeue(entry.claim, failure)
            if failure:
                logger.warning(
                    "run %s attempt %s: %s", entry.claim.run_id, entry.claim.attempt, failure
                )

    def _requeue(self, claim: queue.Claim, error: str) -> None:
        with suppress(queue.FencedError), unit_of_work(self.database.sessions) as session:
            queue.retry_elsewhere(
                session=session, claim=claim, failure_kind=FailureKind.WORKER_LOST, error=error
            )
        self._wake.set()

    def _drain(self, stop_signal: ActorHandle) -> None:
        """Let the tasks hand their runs back; past the grace period, cut them off."""
        with suppress(RayError):
            ray.get(stop_signal.set.remote())
        with self._lock:
            refs = list(self._submitted)
        if refs:
            ray.wait(
                refs,
                num_returns=len(refs),
                timeout=self.settings.shutdown_grace_seconds,
                fetch_local=False,
            )
        with suppress(DBAPIError):
            self._collect(timeout=0)
        with self._lock:
            remaining = list(self._submitted)
        for ref in remaining:
            ray.cancel(ref, force=True)
        if remaining:
            # Their runs resume elsewhere from the last checkpoint.
            with suppress(DBAPIError), unit_of_work(self.database.sessions) as session:
                queue.expire_leases_of(session=session, worker_id=self.executor_id)
                queue.reap_expired(session=session)

    def _start_wake_sources(self) -> None:
        # The executor claims whenever the cluster has room: always ready for an announcement.
        ready = threading.Event()
        ready.set()
        self._threads.extend(
            start_wake_relays(
                database_url=self.settings.database_url,
                wakeup=self._wakeup,
                wake=self._wake,
                ready=ready,
                stop=self.stop_requested,
                retry_seconds=self.settings.poll_seconds,
            )
        )
        self._threads.append(
            supervised(
                self._watch_tasks,
                name="watch_tasks",
                stop=self.stop_requested,
                restart_delay=self.settings.poll_seconds,
            )
        )

    def _watch_tasks(self) -> None:
        # A finished task frees resources (and a lost one's run needs requeueing) now.
        while not self.stop_requested.is_set():
            with self._lock:
                refs = list(self._submitted)
            if not refs:
                self.stop_requested.wait(0.05)
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.5, fetch_local=False)
            if ready:
                self._wake.set()
                self.stop_requested.wait(0.01)


@contextmanager
def _watching(stop_signal: ActorHandle, every: float) -> Iterator[threading.Event]:
    """An event set once the executor's stop signal is, polled every `every` seconds."""
    stopping, done = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(every):
            with suppress(GetTimeoutError):
                if ray.get(stop_signal.is_set.remote(), timeout=every * 4):
                    stopping.set()
                    return

    thread = threading.Thread(target=watch, name="stop-signal", daemon=True)
    thread.start()
    try:
        yield stopping
    finally:
        done.set()
        thread.join(timeout=every * 5)


def _attempt(
    settings: Settings,
    claim: queue.Claim,
    stopping: threading.Event,
    replicas: ReplicaLauncher | None = None,
) -> str | None:
    """Run one attempt in this Ray worker process, as a local worker would."""
    context = ray.get_runtime_context()
    assigned = context.get_assigned_resources()
    device = "cuda" if assigned.get("GPU") else "cpu"
    threads = max(1, int(assigned.get("CPU", 1)))
    torch.set_num_threads(threads)
    worker_settings = dataclasses.replace(
        WorkerSettings.from_settings(
            settings, worker_id=node_worker_id(context.get_node_id()), device=device
        ),
        torch_threads=threads,
    )
    database = Database.connect(
        settings.database_url, sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds
    )
    try:
        execution = RunExecution(
            ExecutionContext(
                settings=worker_settings,
                database=database,
                store=open_store(settings),
                stopping=stopping,
                **({"replicas": replicas} if replicas is not None else {}),
            ),
            claim,
        )
        error = execution.run()
    finally:
        database.dispose()
    return None if error is None else describe(error)


@ray.remote(max_retries=0)
def execute_run(settings: Settings, claim: queue.Claim, stop_signal: ActorHandle) -> str | None:
    """A Ray task training one run in one process; returns why the attempt failed, if it did."""
    with _watching(stop_signal, settings.heartbeat_seconds) as stopping:
        return _attempt(settings, claim, stopping)


@ray.remote(num_cpus=0, max_retries=0)
def train_data_parallel(
    settings: Settings, claim: queue.Claim, stop_signal: ActorHandle, device: str
) -> str | None:
    """A Ray task launching one data-parallel run as a Ray Train TorchTrainer."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    workers = RunSpec.model_validate(claim.spec).resources.workers
    trainer = TorchTrainer(
        _train_replica,
        train_loop_config={"settings": settings, "claim": claim, "stop_signal": stop_signal},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=device == "cuda", resources_per_worker={"CPU": 1}
        ),
        torch_config=TorchConfig(backend="nccl" if device == "cuda" else "gloo"),
        run_config=RunConfig(
            name=f"fitserve-run-{claim.run_id}-{claim.attempt}",
            # fitserve checkpoints each run itself; a failed rank ends the attempt.
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    result = trainer.fit()
    return None if result.error is None else describe(result.error)


def _train_replica(config: dict[str, Any]) -> None:
    """One rank of a Ray Train data-parallel run: rank 0 records, the others follow."""
    import ray.train
    import ray.train.torch

    settings: Settings = config["settings"]
    claim: queue.Claim = config["claim"]
    train_context = ray.train.get_context()
    replica = Replica(train_context.get_world_rank(), train_context.get_world_size())
    with _watching(config["stop_signal"], settings.heartbeat_seconds) as stopping:
        if replica.rank != 0:
            follow(
                settings=settings,
                claim=claim,
                replica=replica,
                device=ray.train.torch.get_device(),
                stopping=stopping,
            )
            return

        def joined(*_: object) -> AbstractContextManager[Replica | None]:
            return _lost_replicas_reported(replica)

        _attempt(settings, claim, stopping, joined)


@contextmanager
def _lost_replicas_reported(replica: Replica) -> Iterator[Replica]:
    """Ray Train's process group, with a lost rank reported as a lost attempt."""
    try:
        yield replica
    except RuntimeError as error:
        if not is_collective_failure(error):
            raise
        raise ReplicaLostError(f"a rank of this data-parallel run was lost: {error}") from error


def run_ray_executor(
    settings: Settings, semaphore: Any = None, parent_pid: int | None = None
) -> None:
    """Entry point of the Ray executor's process; with `parent_pid`, it stops with that one."""
    from app.logs import configure_logging
    from app.processes import exit_with_parent, stop_on_signals

    if parent_pid is not None:
        exit_with_parent(parent_pid)
    configure_logging(settings)
    executor = RayExecutor(settings, wakeup=Wakeup(semaphore) if semaphore is not None else None)
    logger.info("Ray executor %s (pid %s)", executor.executor_id, os.getpid())
    with stop_on_signals(executor.request_stop):
        executor.run()
