"""The entry point of test worker processes, forked from the pre-warmed server."""

import os
from typing import Any

from app.config import Settings
from app.worker.pool import run_worker


def run_test_worker(
    settings: Settings,
    worker_id: str,
    device: str,
    semaphore: Any,
    environ: dict[str, str],
    log_path: str,
) -> None:
    """Run a worker as `fitserve worker` would, with the test's environment and its own log.

    The environment is the test's at start, as a spawned child's would be, not the one the
    fork server started with. Its log goes to a file the test can read.
    """
    os.environ.clear()
    os.environ.update(environ)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # Its parent is the fork server, which exits with the test session.
    run_worker(settings, worker_id, device, semaphore, parent_pid=os.getppid())
