"""Local worker processes, one per device slot, replaced when they die."""

import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from typing import Any

from sqlalchemy.exc import DBAPIError

from app.config import Settings
from app.database import make_engine, make_session_factory, unit_of_work
from app.processes import exit_with_parent
from app.worker import queue

logger = logging.getLogger("fitserve.pool")
SPAWN = multiprocessing.get_context("spawn")


def resolve_devices(settings: Settings) -> list[str]:
    """The device slots: FITSERVE_DEVICES, else every visible GPU, else one cpu slot."""
    if settings.devices:
        return list(settings.devices)
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return ["cpu"]


def new_worker_id(device: str) -> str:
    """A worker id that says where it runs and stays unique across restarts."""
    return f"{socket.gethostname()}/{device}/{uuid.uuid4().hex[:8]}"


def run_worker(
    settings: Settings,
    worker_id: str,
    device: str,
    semaphore: Any = None,
    parent_pid: int | None = None,
    local_workers: int = 1,
) -> None:
    """Entry point of a worker process; with `parent_pid`, it stops when that process dies.

    `local_workers` is how many workers share this machine's cores.
    """
    from app.logs import configure_logging

    # Here, not at the top: torch is most of its import time, and the supervisor that
    # imports this module to start its workers needs none of it.
    from app.worker.attempt import WorkerSettings
    from app.worker.local import Worker
    from app.worker.wakeups import Wakeup

    if parent_pid is not None:
        exit_with_parent(parent_pid)
    configure_logging(settings)
    worker_settings = WorkerSettings.from_settings(
        settings, worker_id=worker_id, device=device, local_workers=local_workers
    )
    worker = Worker(worker_settings, wakeup=Wakeup(semaphore) if semaphore is not None else None)
    with worker.signal_handlers():
        worker.run()


HEALTHY_LIFETIME_SECONDS = 60.0
MAX_RESTART_DELAY_SECONDS = 30.0


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before replacing a worker after this many quick deaths in a row."""
    # The first is replaced at once (a killed worker); one that keeps dying soon after it
    # starts (a broken device or install) is retried ever more slowly, not in a hot loop.
    if quick_deaths <= 1:
        return 0.0
    return min(MAX_RESTART_DELAY_SECONDS, 2.0 ** (quick_deaths - 2))


@dataclass
class _Slot:
    device: str
    worker_id: str
    process: SpawnProcess
    started_at: float = field(default_factory=time.monotonic)
    quick_deaths: int = 0
    restart_at: float | None = None


class WorkerPool:
    """Starts a worker per device slot and replaces any that dies, releasing its runs at once."""

    def __init__(self, settings: Settings, *, semaphore: Any = None) -> None:
        self.settings = settings
        self.semaphore = semaphore
        self.devices = resolve_devices(settings)
        self.slots: list[_Slot] = []
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start one worker per device slot."""
        self.slots = [self._spawn(device) for device in self.devices]

    def _spawn(self, device: str, quick_deaths: int = 0) -> _Slot:
        worker_id = new_worker_id(device)
        process = SPAWN.Process(
            target=run_worker,
            args=(
                self.settings,
                worker_id,
                device,
                self.semaphore,
                os.getpid(),
                len(self.devices),
            ),
            name=f"fitserve-worker-{device}",
        )
        process.start()
        logger.info("started worker %s (pid %s)", worker_id, process.pid)
        return _Slot(device=device, worker_id=worker_id, process=process, quick_deaths=quick_deaths)

    def replace_dead(self) -> None:
        """Release the runs of workers that died and start replacements (backing off)."""
        now = time.monotonic()
        for index, slot in enumerate(self.slots):
            if slot.process.is_alive() or self._stopping.is_set():
                continue
            if slot.restart_at is None:
                self._release(slot.worker_id)
                quick = now - slot.started_at < HEALTHY_LIFETIME_SECONDS
                slot.quick_deaths = slot.quick_deaths + 1 if quick else 1
                delay = restart_delay(slot.quick_deaths)
                slot.restart_at = now + delay
                logger.warning(
                    "worker %s exited with %s; replacing it in %.0f s",
                    slot.worker_id,
                    slot.process.exitcode,
                    delay,
                )
            if now >= slot.restart_at:
                self.slots[index] = self._spawn(slot.device, quick_deaths=slot.quick_deaths)

    def _release(self, worker_id: str) -> None:
        engine = make_engine(
            self.settings.database_url,
            sqlite_busy_timeout=self.settings.sqlite_busy_timeout_seconds,
        )
        # Without the database the dead worker's lease simply runs out and is reaped later.
        try:
            with suppress(DBAPIError), unit_of_work(make_session_factory(engine)) as session:
                queue.expire_leases_of(session=session, worker_id=worker_id)
                queue.reap_expired(session=session)
                queue.unregister_worker(session=session, worker_id=worker_id)
        finally:
            engine.dispose()
        if self.semaphore is not None:
            self.semaphore.release()

    def stop(self) -> None:
        """Ask every worker to stop gracefully; kill those still running after the grace period."""
        self._stopping.set()
        for slot in self.slots:
            if slot.process.is_alive():
                slot.process.terminate()
        for slot in self.slots:
            slot.process.join(self.settings.shutdown_grace_seconds)
            if slot.process.is_alive():
                logger.error("worker %s did not stop in time; killing it", slot.worker_id)
                slot.process.kill()
                slot.process.join()
