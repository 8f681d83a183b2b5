"""The local worker: a long-lived process that claims queued runs one at a time and trains
them on its device."""

import logging
import math
import os
import socket
import threading
import time
from contextlib import AbstractContextManager, suppress
from datetime import timedelta

import torch
from sqlalchemy.exc import DBAPIError

from app.artifacts.store import open_store
from app.database import Database, unit_of_work, utcnow
from app.logs import log_context
from app.processes import stop_on_signals
from app.runs.models import FailureKind
from app.sweeps import flows as sweeps
from app.training.engine import Replica, warm_up
from app.training.spec import RunSpec
from app.worker import queue
from app.worker.attempt import ExecutionContext, RunExecution, WorkerSettings
from app.worker.failures import (
    DEVICE_ERRORS,
    failure_kind,
)
from app.worker.models import WorkerRecord
from app.worker.replicas import local_replicas
from app.worker.wakeups import Wakeup, start_wake_relays

logger = logging.getLogger("fitserve.worker")


class Worker:
    """Claims and trains runs until asked to stop; SIGTERM/SIGINT stop it gracefully."""

    def __init__(self, settings: WorkerSettings, *, wakeup: Wakeup | None = None) -> None:
        self.settings = settings
        self.database = Database.connect(
            settings.service.database_url,
            sqlite_busy_timeout=settings.service.sqlite_busy_timeout_seconds,
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
                    if time.monotonic() - maintained_at >= self.settings.service.heartbeat_seconds:
                        registered = self._maintain_queue()
                        maintained_at = time.monotonic()
                    sweeps.advance_sweeps(database=self.database, settings=self.settings.service)
                    claim = self._claim()
                except DBAPIError:
                    # An unreachable database is waited out, not a reason to exit.
                    logger.warning("database unavailable; retrying", exc_info=True)
                    self.stop_requested.wait(self.settings.service.poll_seconds)
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
                self._wake.wait(self.settings.service.poll_seconds)
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
        self.stop_requested.wait(self.settings.service.poll_seconds)

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
            since = utcnow() - timedelta(seconds=self.settings.service.lease_seconds)
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
                lease_seconds=self.settings.service.lease_seconds,
            )

    def _start_wake_sources(self) -> None:
        start_wake_relays(
            database_url=self.settings.service.database_url,
            wakeup=self._wakeup,
            wake=self._wake,
            ready=self._idle,
            stop=self.stop_requested,
            retry_seconds=self.settings.service.poll_seconds,
        )
