"""One attempt at one run: heartbeat, train, record epochs, finish or hand the run back.

The local worker loop (`local.py`) and the Ray executor both run their claims through it.
"""

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.artifacts import service as artifacts
from app.artifacts.store import ArtifactStore, StagedObject
from app.config import Settings
from app.database import Database, unit_of_work
from app.datasets.service import load_table
from app.errors import InvalidInputError
from app.runs import records
from app.runs.models import FailureKind, RunStatus
from app.sweeps import flows as sweeps
from app.training.data import Table
from app.training.engine import Outcome, Replica, Trainer, estimation_error
from app.training.evaluation import EpochReport
from app.training.serialization import CheckpointBlob, export_weights
from app.training.spec import RunSpec
from app.worker import queue
from app.worker.failures import (
    DeviceUnavailableError,
    describe,
    failure_kind,
)
from app.worker.faults import FaultInjector
from app.worker.threads import supervised

logger = logging.getLogger("fitserve.worker")
T = TypeVar("T")
FIRST_RETRY_DELAY_SECONDS = 0.05
MAX_RETRY_DELAY_SECONDS = 1.0


@dataclass(frozen=True)
class WorkerSettings:
    """Who one worker is (its id, device and share of the cores), and the service's settings."""

    worker_id: str
    device: str
    torch_threads: int
    service: Settings

    @classmethod
    def from_settings(
        cls, settings: Settings, *, worker_id: str, device: str, local_workers: int = 1
    ) -> "WorkerSettings":
        """This worker's settings; `local_workers` share the machine's cores."""
        return cls(
            worker_id=worker_id,
            device=device,
            torch_threads=settings.threads_per_worker(local_workers),
            service=settings,
        )


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
            context.settings.service.test_faults.get(claim.run_id), attempt=claim.attempt
        )
        self.checkpoint_every = 1
        # The last epoch's report and checkpoint, which `_conclude` writes with the weights.
        self._last_epoch: tuple[EpochReport, CheckpointBlob] | None = None
        # Objects replaced by the current transaction, and by the last committed one: the
        # next transaction releases those, saving each epoch a transaction of its own.
        self._replaced: list[str] = []
        self._pending: list[str] = []
        self.prune_requested = threading.Event()
        self._pruning: Callable[[int], bool] | None = None
        self._pruning_known = False
        self.fenced = threading.Event()
        self.attention = threading.Event()
        self._heartbeat_done = threading.Event()
        # When this attempt's lease ends at the latest, by this process's clock: the budget
        # for retrying writes while the database is away.
        self._lease_deadline = time.monotonic() + context.settings.service.lease_seconds

    def run(self) -> Exception | None:
        """Execute the attempt; every exit path leaves the run in a correct state.

        Returns the error that failed the attempt, if one did.
        """
        settings = self.context.settings
        heartbeat = supervised(
            self._heartbeat,
            name=f"heartbeat-{self.claim.run_id}",
            stop=self._heartbeat_done,
            restart_delay=settings.service.heartbeat_seconds,
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
            heartbeat.join(timeout=settings.service.heartbeat_seconds + 5)
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
                # A run being cancelled ends cancelled: the run's status says so, not this flag.
                queue.hand_back(
                    session=session, claim=self.claim, pruned=self.prune_requested.is_set()
                )

            self._storing(blob.tensors, stop)
            self._release_pending()

    def _heartbeat(self) -> None:
        settings = self.context.settings
        while not self._heartbeat_done.wait(settings.service.heartbeat_seconds):
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
            self._lease_deadline = started + settings.service.lease_seconds
            self._note(status)

    def _renew_lease(self, session: Session) -> str:
        settings = self.context.settings
        queue.worker_heartbeat(
            session=session, worker_id=settings.worker_id, current_run_id=self.claim.run_id
        )
        return queue.renew_lease(
            session=session, claim=self.claim, lease_seconds=settings.service.lease_seconds
        )

    def _note(self, status: str) -> None:
        """Stop at the next batch when the run is being cancelled."""
        if status == RunStatus.CANCELLING:
            self.attention.set()

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
