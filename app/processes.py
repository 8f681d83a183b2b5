"""Processes of `fitserve serve`, `api` and `worker`: children that do not outlive their
parent, and signals that ask for a graceful stop."""

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies, however it dies.

    A parent stopped normally stops its children itself; one killed outright (SIGKILL, the
    OOM killer) cannot, and without this its API would keep the port and its workers their
    runs. SIGTERM is a graceful stop: a worker hands its run back. Linux only; elsewhere a
    killed parent's workers are found by their expiring leases, as before.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The parent may have died before the request took effect.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def stop_on_signals(request_stop: Callable[[], None]) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into `request_stop()` while the block runs."""

    def handle(_signum: int, _frame: FrameType | None) -> None:
        # Only set events here: logging from a signal handler can deadlock on its lock.
        request_stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
