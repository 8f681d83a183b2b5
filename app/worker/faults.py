"""Test-only fault injection: what FITSERVE_TEST_FAULTS asks a worker to do to a run.

Inert unless the variable names the run; the public API knows nothing of it.
"""

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.config import RunFaults

logger = logging.getLogger("fitserve.worker")


class FaultInjector:
    """The faults of one attempt at one run."""

    def __init__(self, faults: RunFaults | None, *, attempt: int) -> None:
        self._faults = faults or RunFaults()
        self._attempt = attempt

    @property
    def stall_heartbeat(self) -> bool:
        """Whether this attempt stops renewing its lease, like a worker cut off from the DB."""
        return self._attempt <= self._faults.stall_heartbeat_on_attempts

    def before_batch(
        self, epoch: int, batch: int, n_batches: int, interrupted: Callable[[], bool]
    ) -> None:
        """Die, run out of memory, or pause, halfway through the named epoch."""
        if batch != n_batches // 2:
            return
        faults = self._faults
        if faults.pause_in_epoch == epoch:
            self._pause(interrupted)
        if faults.kill_at_epoch == epoch and self._attempt <= faults.kill_on_attempts:
            logger.warning("test fault: killing worker pid %s in epoch %s", os.getpid(), epoch)
            os.kill(os.getpid(), signal.SIGKILL)
        if (
            faults.out_of_memory_at_epoch == epoch
            and self._attempt <= faults.out_of_memory_on_attempts
        ):
            raise torch.OutOfMemoryError("CUDA out of memory (injected by FITSERVE_TEST_FAULTS)")

    def before_commit(self, epoch: int) -> None:
        """Die between publishing the epoch's checkpoint object and committing its rows."""
        faults = self._faults
        if faults.kill_before_commit_at_epoch == epoch and self._attempt <= faults.kill_on_attempts:
            logger.warning("test fault: killing worker pid %s before commit", os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)

    def after_epoch(self, epoch: int, interrupted: Callable[[], bool]) -> None:
        """Pause at a named point until the test says so; or linger, to make a run long."""
        if self._faults.pause_after_epoch == epoch:
            self._pause(interrupted)
        if self._faults.epoch_sleep_seconds:
            deadline = time.monotonic() + self._faults.epoch_sleep_seconds
            while not interrupted() and time.monotonic() < deadline:
                time.sleep(0.05)

    def _pause(self, interrupted: Callable[[], bool]) -> None:
        """Wait at this point, the first time any attempt reaches it, until told to go on."""
        faults = self._faults
        folder = Path(faults.pause_dir) if faults.pause_dir else None
        if folder is None or (folder / "paused").exists():
            return
        (folder / "paused").touch()
        # A stop, a cancel or a fence ends the pause as it would end training, unless the
        # test wants a worker that hangs.
        while not (folder / "resume").exists() and (faults.pause_ignores_stop or not interrupted()):
            time.sleep(0.01)
