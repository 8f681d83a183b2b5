"""A long-lived worker process: claims queued runs one at a time and trains them on its device."""

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.artifacts import service as artifacts
from app.artifacts.store import ArtifactStore, StagedObject, open_store
from app.config import RunFaults, Settings
from app.database import Database, unit_of_work, utcnow
from app.datasets.service import load_table
from app.errors import InvalidInputError
from app.logs import log_context
from app.notifications import relay_notifications
from app.processes import stop_on_signals
from app.runs import records
from app.runs.models import FailureKind, RunStatus
from app.sweeps import flows as sweeps
from app.training.artifacts import CheckpointBlob, export_weights
from app.training.data import Table
from app.training.engine import (
    EpochReport,
    Outcome,
    Replica,
    Trainer,
    estimation_error,
    warm_up,
)
from app.training.spec import RunSpec
from app.worker import queue
from app.worker.failures import (
    DEVICE_ERRORS,
    DeviceUnavailableError,
    describe,
    failure_kind,
)
from app.worker.faults import FaultInjector
from app.worker.models import WorkerRecord
from app.worker.replicas import local_replicas
from app.worker.threads import supervised

logger = logging.getLogger("fitserve.worker")
T = TypeVar("T")
FIRST_RETRY_DELAY_SECONDS = 0.05
MAX_RETRY_DELAY_SECONDS = 1.0


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker needs to know, taken from the service settings."""

    worker_id: str
    device: str
    database_url: str
    sqlite_busy_timeout_seconds: float
    lease_seconds: float
    heartbeat_seconds: float
    poll_seconds: float
    torch_threads: int
    # The service's own, for what a worker queues itself: a sweep's next trials.
    service: Settings
    test_faults: dict[int, RunFaults] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, worker_id: str, device: str, local_workers: int = 1
    ) -> "WorkerSettings":
        """Pick this worker's settings out of the service's; `local_workers` share the cores."""
        return cls(
            worker_id=worker_id,
            device=device,
            database_url=settings.database_url,
            sqlite_busy_timeout_seconds=settings.sqlite_busy_timeout_seconds,
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            poll_seconds=settings.poll_seconds,
            torch_threads=settings.threads_per_worker(local_workers),
            service=settings,
            test_faults=settings.test_faults,
        )


class Wakeup:
    """Counts queued-run announcements from the API in the same pool (a process semaphore)."""

    def __init__(self, semaphore: Any) -> None:
        self._semaphore = semaphore

    def notify(self) -> None:
        """Wake one idle worker."""
        self._semaphore.release()

    def wait(self, timeout: float) -> bool:
        """Block until notified or the timeout passes."""
        return bool(self._semaphore.acquire(timeout=timeout))


class Worker:
    """Claims and trains runs until asked to stop; SIGTERM/SIGINT stop it gracefully."""

    def __init__(self, settings: WorkerSettings, *, wakeup: Wakeup | None = None) -> None:
        self.settings = settings
        self.database = Database.connect(
            settings.database_url, sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds
        )
        self.store = open_store(settings.service)
        self.stop_requested = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._wakeup = wakeup

    def request_stop(self) -> None:
        """Ask the worker to finish the current batch, checkpoint, hand its run back and exit."""
        self.stop_requested.set()
        self._wake.set()

    def signal_handlers(self) -> AbstractContextManager[None]:
        """Turn SIGTERM and SIGINT into a graceful stop while the worker runs."""
        return stop_on_signals(self.request_stop)

    def run(self) -> None:
        """The worker loop: maintain the queue, claim, train, wait for a wake-up."""
        torch.set_num_threads(self.settings.torch_threads)
        try:
            warm_up(torch.device(self.settings.device))
        except (RuntimeError, AssertionError):
            # A missing device is reported on each run that needs it, not fatal to the worker.
            logger.warning("device %s is not usable", self.settings.device, exc_info=True)
        self._start_wake_sources()
        registered = False
        maintained_at = -math.inf
        # Whether a run ended since the worker's row was last refreshed: it still names it.
        ran_since_maintenance = False
        try:
            while not self.stop_requested.is_set():
                try:
                    if not registered:
                        self._register()
                        registered = True
                    # Heartbeat and reaper once a beat, not before every claim: between
                    # short runs they were a good part of each run's cost.
                    if time.monotonic() - maintained_at >= self.settings.heartbeat_seconds:
                        registered = self._maintain_queue()
                        maintained_at = time.monotonic()
                    sweeps.advance_sweeps(database=self.database, settings=self.settings.service)
                    claim = self._claim()
                except DBAPIError:
                    # An unreachable database is waited out, not a reason to exit.
                    logger.warning("database unavailable; retrying", exc_info=True)
                    self.stop_requested.wait(self.settings.poll_seconds)
                    continue
                if claim is not None:
                    with log_context(
                        run_id=claim.run_id,
                        attempt=claim.attempt,
                        worker_id=self.settings.worker_id,
                    ):
                        self._after(RunExecution(self._context(), claim).run())
                    ran_since_maintenance = True
                    continue
                if ran_since_maintenance:
                    # Going idle: refresh the row first, so it no longer names the last run.
                    ran_since_maintenance, maintained_at = False, -math.inf
                    continue
                self._idle.set()
                self._wake.wait(self.settings.poll_seconds)
                self._idle.clear()
                self._wake.clear()
        finally:
            self.stop_requested.set()
            self._idle.set()
            with suppress(DBAPIError), unit_of_work(self.database.sessions) as session:
                queue.unregister_worker(session=session, worker_id=self.settings.worker_id)
            # The wake relays are daemon threads with nothing to flush: joining them would
            # make every stop wait out their poll of the semaphore or the LISTEN connection.
            self.database.dispose()

    def _after(self, error: Exception | None) -> None:
        """Step aside after an attempt that failed for the machine's sake."""
        if error is None or failure_kind(error) != FailureKind.RESOURCES:
            return
        if self._wakeup is not None:
            # A sibling in this pool takes the run again (others hear NOTIFY, or poll).
            self._wakeup.notify()
        if isinstance(error, DEVICE_ERRORS):
            logger.error(
                "worker %s: device %s failed; stopping so a fresh process replaces this one",
                self.settings.worker_id,
                self.settings.device,
            )
            self.request_stop()
            return
        # Out of memory: leave the retry to another worker if one is free.
        self.stop_requested.wait(self.settings.poll_seconds)

    def _context(self) -> "ExecutionContext":
        settings = self.settings

        def replicas(
            claim: queue.Claim, spec: RunSpec, device: torch.device
        ) -> AbstractContextManager[Replica | None]:
            return local_replicas(
                settings=settings.service,
                threads=settings.torch_threads,
                claim=claim,
                spec=spec,
                device=device,
            )

        return ExecutionContext(
            settings=settings,
            database=self.database,
            store=self.store,
            stopping=self.stop_requested,
            replicas=replicas,
        )

    def _register(self) -> None:
        record = WorkerRecord(
            id=self.settings.worker_id,
            pid=os.getpid(),
            host=socket.gethostname(),
            device=self.settings.device,
            started_at=utcnow(),
            heartbeat_at=utcnow(),
            stopped_at=None,
            current_run_id=None,
        )
        with unit_of_work(self.database.sessions) as session:
            queue.register_worker(session=session, record=record)

    def _maintain_queue(self) -> bool:
        """Heartbeat, reap and retire; False when this worker's row is gone."""
        with unit_of_work(self.database.sessions) as session:
            registered = queue.worker_heartbeat(
                session=session, worker_id=self.settings.worker_id, current_run_id=None
            )
            queue.reap_expired(session=session)
            since = utcnow() - timedelta(seconds=self.settings.lease_seconds)
            queue.retire_silent_workers(session=session, silent_since=since)
            queue.fail_unservable(
                session=session,
                live_devices=queue.live_worker_devices(session=session, since=since),
            )
        return registered

    def _claim(self) -> queue.Claim | None:
        with unit_of_work(self.database.sessions) as session:
            return queue.claim_next(
                session=session,
                worker_id=self.settings.worker_id,
                device=self.settings.device,
                lease_seconds=self.settings.lease_seconds,
            )

    def _start_wake_sources(self) -> None:
        start_wake_relays(
            database_url=self.settings.database_url,
            wakeup=self._wakeup,
            wake=self._wake,
            ready=self._idle,
            stop=self.stop_requested,
            retry_seconds=self.settings.poll_seconds,
        )


def start_wake_relays(
    *,
    database_url: str,
    wakeup: Wakeup | None,
    wake: threading.Event,
    ready: threading.Event,
    stop: threading.Event,
    retry_seconds: float,
) -> list[threading.Thread]:
    """Threads that set `wake` on a pool's announcements and on PostgreSQL's NOTIFY.

    An announcement is taken only while `ready` is set, so a busy worker never swallows one
    that an idle sibling could act on. Until LISTEN is back the caller still polls.
    """

    def relay_pool_wakeups() -> None:
        assert wakeup is not None
        while not stop.is_set():
            ready.wait()
            if wakeup.wait(timeout=0.5):
                if stop.is_set():
                    # Taken while stopping: the announcement is a sibling's to act on.
                    wakeup.notify()
                    return
                wake.set()

    def relay_postgres_notifications() -> None:
        relay_notifications(
            database_url=database_url,
            channel=queue.NOTIFY_CHANNEL,
            on_notify=lambda _payload: wake.set(),
            stop=stop,
            retry_seconds=retry_seconds,
            logger=logger,
        )

    relays = [relay_pool_wakeups] if wakeup is not None else []
    if database_url.startswith("postgresql"):
        relays.append(relay_postgres_notifications)
    return [
        supervised(relay, name=relay.__name__, stop=stop, restart_delay=retry_seconds)
        for relay in relays
    ]


ReplicaLauncher = Callable[
    [queue.Claim, RunSpec, torch.device], AbstractContextManager[Replica | None]
]


def single_process(
    _claim: queue.Claim, _spec: RunSpec, _device: torch.device
) -> AbstractContextManager[None]:
    """The launcher of an executor that trains every run in one process."""
    return nullcontext()


@dataclass(frozen=True)
class ExecutionContext:
    """What one attempt needs from its executor: settings, storage, the stop signal, and how
    the processes of a data-parallel run are started (`replicas`)."""

    settings: WorkerSettings
    database: Database
    store: ArtifactStore
    stopping: threading.Event
    replicas: ReplicaLauncher = single_process


class RunExecution:
    """One attempt at one run: heartbeat, train, record epochs, finish or hand back."""

    def __init__(self, context: ExecutionContext, claim: queue.Claim) -> None:
        self.context = context
        self.claim = claim
        self.faults = FaultInjector(
            context.settings.test_faults.get(claim.run_id), attempt=claim.attempt
        )
        self.checkpoint_every = 1
        # The last epoch's report and checkpoint, which `_conclude` writes with the weights.
        self._last_epoch: tuple[EpochReport, CheckpointBlob] | None = None
        # Objects replaced by the current transaction, and by the last committed one: the
        # next transaction releases those, saving each epoch a transaction of its own.
        self._replaced: list[str] = []
        self._pending: list[str] = []
        self.cancel_requested = threading.Event()
        self.prune_requested = threading.Event()
        self._pruning: Callable[[int], bool] | None = None
        self._pruning_known = False
        self.fenced = threading.Event()
        self.attention = threading.Event()
        self._heartbeat_done = threading.Event()
        # When this attempt's lease ends at the latest, by this process's clock: the budget
        # for retrying writes while the database is away.
        self._lease_deadline = time.monotonic() + context.settings.lease_seconds

    def run(self) -> Exception | None:
        """Execute the attempt; every exit path leaves the run in a correct state.

        Returns the error that failed the attempt, if one did.
        """
        settings = self.context.settings
        heartbeat = supervised(
            self._heartbeat,
            name=f"heartbeat-{self.claim.run_id}",
            stop=self._heartbeat_done,
            restart_delay=settings.heartbeat_seconds,
        )
        try:
            self._execute()
        except queue.FencedError:
            logger.warning(
                "run %s attempt %s was fenced off", self.claim.run_id, self.claim.attempt
            )
        except DBAPIError:
            # The database stayed away for as long as the lease: the run resumes elsewhere
            # from its last checkpoint.
            logger.exception(
                "run %s: database unreachable; abandoning the attempt", self.claim.run_id
            )
        except Exception as error:
            self._fail(error)
            return error
        finally:
            self._heartbeat_done.set()
            heartbeat.join(timeout=settings.heartbeat_seconds + 5)
        return None

    def _fail(self, error: Exception) -> None:
        kind = failure_kind(error)
        if kind == FailureKind.INVALID_INPUT:
            logger.warning("run %s: invalid input: %s", self.claim.run_id, error)
        else:
            logger.error("run %s failed (%s)", self.claim.run_id, kind, exc_info=error)

        def record(session: Session) -> str:
            if kind == FailureKind.RESOURCES:
                return queue.retry_elsewhere(
                    session=session, claim=self.claim, failure_kind=kind, error=describe(error)
                )
            queue.finish(
                session=session,
                claim=self.claim,
                status=RunStatus.FAILED,
                failure_kind=kind,
                error=describe(error),
            )
            return RunStatus.FAILED

        with suppress(queue.FencedError, DBAPIError):
            status = self._transaction(record)
            logger.warning("run %s is %s after a %s failure", self.claim.run_id, status, kind)

    def _transaction(self, work: Callable[[Session], T], *, read: bool = False) -> T:
        """Run `work` in one transaction; while the database cannot be reached, try again.

        Retries back off for as long as this attempt's lease lasts, so a worker that only
        lost its connection keeps its attempt. Past that the DBAPIError is raised.
        """
        database = self.context.database
        sessions = database.read_sessions if read else database.sessions
        delay = FIRST_RETRY_DELAY_SECONDS
        while True:
            try:
                with unit_of_work(sessions) as session:
                    return work(session)
            except (OperationalError, InterfaceError) as error:
                # Lost connections, a server restarting, SQLite's lock: worth waiting out.
                if time.monotonic() + delay >= self._lease_deadline:
                    raise
                logger.warning(
                    "run %s: database unavailable (%s); retrying in %.2f s",
                    self.claim.run_id,
                    type(error.orig).__name__,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)

    def _storing(self, data: bytes, work: Callable[[Session, StagedObject], T]) -> T:
        """Stage `data` as an object and run `work` with it in one transaction.

        The transaction first releases the objects that committed transactions replaced
        (it comes later than they do), and its own replaced objects wait for the next one.
        """
        store = self.context.store
        with store.staged_bytes(data) as staged:

            def work_and_release(session: Session) -> T:
                artifacts.release_within(session=session, store=store, sha256s=self._pending)
                self._replaced = []
                return work(session, staged)

            result = self._transaction(work_and_release)
        self._pending = self._replaced
        return result

    def _release_pending(self) -> None:
        """Release what the attempt's last transaction replaced, in one of its own."""
        store, database = self.context.store, self.context.database
        artifacts.release(database=database, store=store, sha256s=self._pending)
        self._pending = []

    def _execute(self) -> None:
        spec = self._spec()
        self.checkpoint_every = spec.checkpoint_every
        device = self._torch_device()
        run_id = self.claim.run_id
        store = self.context.store

        def read(session: Session) -> tuple[Table, CheckpointBlob | None]:
            table = load_table(session=session, store=store, dataset=spec.dataset, task=spec.task)
            return table, records.load_checkpoint(session=session, store=store, run_id=run_id)

        # Fetching a stored dataset can take a while: not under SQLite's write lock.
        table, checkpoint = self._transaction(read, read=True)
        with self.context.replicas(self.claim, spec, device) as replica:
            trainer = Trainer(spec=spec, table=table, device=device, replica=replica)
            if checkpoint is not None:
                trainer.restore(checkpoint)

            def begin(session: Session) -> None:
                queue.fence(session=session, claim=self.claim, epochs_done=trainer.epochs_done)
                records.drop_epochs_after(session=session, run_id=run_id, epoch=trainer.epochs_done)

            self._transaction(begin)
            outcome = trainer.run(self)
        self._conclude(outcome, trainer)

    def _spec(self) -> RunSpec:
        try:
            return RunSpec.model_validate(self.claim.spec)
        except ValidationError as error:
            # A stored spec that no longer validates would fail on every attempt.
            raise InvalidInputError(f"the stored spec is not valid: {error}") from None

    def _torch_device(self) -> torch.device:
        # The claim only matched runs whose requested device this worker serves.
        own = self.context.settings.device
        if own.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"worker device {own} is not available: torch sees no CUDA device"
            )
        return torch.device(own)

    def _conclude(self, outcome: Outcome, trainer: Trainer) -> None:
        run_id = self.claim.run_id
        if outcome.status == "completed":
            report = outcome.last_report
            weights = export_weights(trainer.module, trainer.architecture)
            metrics = _final_metrics(report, outcome) if report else None
            errors = estimation_error(trainer)
            last = self._last_epoch
            store = self.context.store
            staging = store.staged_bytes(last[1].tensors) if last else nullcontext(None)
            with staging as checkpoint:

                def succeed(session: Session, staged: StagedObject) -> None:
                    if last is not None and checkpoint is not None:
                        # First, so that its epoch event comes before the final status event.
                        self._record_epoch(session, last[0], (last[1], checkpoint))
                    queue.finish(
                        session=session,
                        claim=self.claim,
                        status=RunStatus.SUCCEEDED,
                        metrics=metrics,
                        estimation_error=errors,
                    )
                    replaced = records.save_weights(
                        session=session, store=store, run_id=run_id, weights=staged
                    )
                    self._replaced.extend([replaced] if replaced else [])

                self._storing(weights.data, succeed)
            self._release_pending()
        elif outcome.status in ("diverged", "timeout"):
            kind = FailureKind.DIVERGED if outcome.status == "diverged" else FailureKind.TIMEOUT
            self._transaction(
                lambda session: queue.finish(
                    session=session,
                    claim=self.claim,
                    status=RunStatus.FAILED,
                    failure_kind=kind,
                    error=outcome.message,
                )
            )
        elif self.fenced.is_set():
            logger.warning(
                "run %s attempt %s lost its lease; not writing", run_id, self.claim.attempt
            )
        else:
            blob = trainer.checkpoint()

            def stop(session: Session, staged: StagedObject) -> None:
                queue.fence(
                    session=session, claim=self.claim, epochs_done=blob.state["progress"]["epoch"]
                )
                self._save_checkpoint(session, blob, staged)
                if self.cancel_requested.is_set():
                    queue.finish(session=session, claim=self.claim, status=RunStatus.CANCELLED)
                elif self.prune_requested.is_set():
                    queue.finish(session=session, claim=self.claim, status=RunStatus.PRUNED)
                else:
                    queue.hand_back(session=session, claim=self.claim)

            self._storing(blob.tensors, stop)
            self._release_pending()

    def _heartbeat(self) -> None:
        settings = self.context.settings
        while not self._heartbeat_done.wait(settings.heartbeat_seconds):
            if self.faults.stall_heartbeat:
                continue
            started = time.monotonic()
            try:
                # One try per beat: the next beat is the retry.
                with unit_of_work(self.context.database.sessions) as session:
                    status = self._renew_lease(session)
            except queue.FencedError:
                self._raise_attention(self.fenced)
                return
            except SQLAlchemyError:
                logger.warning("heartbeat for run %s failed; retrying", self.claim.run_id)
                continue
            self._lease_deadline = started + settings.lease_seconds
            self._note(status)

    def _renew_lease(self, session: Session) -> str:
        settings = self.context.settings
        queue.worker_heartbeat(
            session=session, worker_id=settings.worker_id, current_run_id=self.claim.run_id
        )
        return queue.renew_lease(
            session=session, claim=self.claim, lease_seconds=settings.lease_seconds
        )

    def _note(self, status: str) -> None:
        """Stop at the next batch when the run is being cancelled."""
        if status == RunStatus.CANCELLING:
            self._raise_attention(self.cancel_requested)

    def _raise_attention(self, flag: threading.Event) -> None:
        flag.set()
        self.attention.set()

    # TrainingHooks

    def interrupted(self) -> bool:
        """Stop at this batch boundary when cancelled, fenced or shutting down."""
        return self.attention.is_set() or self.context.stopping.is_set()

    def before_batch(self, epoch: int, batch: int, n_batches: int) -> None:
        """Where test faults strike."""
        self.faults.before_batch(epoch, batch, n_batches, self.interrupted)

    def epoch_finished(self, report: EpochReport, trainer: Trainer) -> None:
        """Write the epoch row, with a checkpoint when one is due, in one transaction.

        The last epoch's row and checkpoint are left to the run's final transaction, which
        commits them with the weights and the final status: one transaction fewer per run.
        """
        if report.epoch == trainer.spec.epochs:
            # Taken now: finishing may restore the best epoch's weights into the module.
            self._last_epoch = (report, trainer.checkpoint())
            self.faults.after_epoch(report.epoch, self.interrupted)
            return
        due = report.epoch % self.checkpoint_every == 0
        try:
            if due:
                blob = trainer.checkpoint()
                status = self._storing(
                    blob.tensors,
                    lambda session, staged: self._record_epoch(session, report, (blob, staged)),
                )
            else:
                status = self._transaction(lambda session: self._record_epoch(session, report))
        except queue.FencedError:
            self._raise_attention(self.fenced)
            return
        self._note(status)
        if report.epoch < trainer.spec.epochs and self._should_prune(report.epoch):
            self._raise_attention(self.prune_requested)
        self.faults.after_epoch(report.epoch, self.interrupted)

    def _should_prune(self, epoch: int) -> bool:
        """Ask the sweep's pruner, for a trial of a sweep that has one."""
        database = self.context.database
        try:
            if not self._pruning_known:
                self._pruning = sweeps.pruning_check(database=database, run_id=self.claim.run_id)
                self._pruning_known = True
            return self._pruning is not None and self._pruning(epoch)
        except SQLAlchemyError:
            # The trial trains on; the next epoch asks again.
            logger.warning("could not ask the pruner about run %s", self.claim.run_id)
            return False

    def _record_epoch(
        self,
        session: Session,
        report: EpochReport,
        checkpoint: tuple[CheckpointBlob, StagedObject] | None = None,
    ) -> str:
        status = queue.fence(session=session, claim=self.claim, epochs_done=report.epoch)
        if checkpoint is not None:
            self._save_checkpoint(session, *checkpoint)
            self.faults.before_commit(report.epoch)
        # Last: its event takes the project's event lock (PostgreSQL), held until commit.
        records.add_epoch(
            session=session, run_id=self.claim.run_id, attempt=self.claim.attempt, report=report
        )
        return status

    def _save_checkpoint(
        self, session: Session, blob: CheckpointBlob, staged: StagedObject
    ) -> None:
        replaced = records.save_checkpoint(
            session=session,
            store=self.context.store,
            run_id=self.claim.run_id,
            attempt=self.claim.attempt,
            state=blob.state,
            tensors=staged,
        )
        self._replaced.extend([replaced] if replaced else [])


def _final_metrics(report: EpochReport, outcome: Outcome) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "epoch": report.epoch,
        "train_loss": report.train_loss,
        "val_loss": report.val_loss,
        **report.metrics,
    }
    if outcome.best_epoch is not None:
        metrics["best_epoch"] = outcome.best_epoch
    if outcome.stopped_early_at is not None:
        metrics["early_stopped_at"] = outcome.stopped_early_at
    return metrics
