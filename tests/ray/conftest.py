"""Ray tier: the Ray executor on a local Ray instance on loopback, against the test database.

Deselected by default (Ray's start-up costs seconds); run once per CI run with
`make test TESTS="tests/ray -m ray"`. Each test starts its own executor process, which
starts and stops its own Ray instance, so faults can name the runs the test posted.
"""

from collections.abc import Iterator
from typing import Any

import pytest

from app.config import RunFaults, Settings
from app.worker.pool import SPAWN
from app.worker.ray_executor import run_ray_executor


class RayExecutors:
    """Start Ray executor processes; all are stopped (SIGTERM, then SIGKILL) after the test."""

    def __init__(self, settings: Settings, semaphore: Any) -> None:
        self.settings = settings
        self.semaphore = semaphore
        self.processes: list[Any] = []

    def start(self, faults: dict[int, dict[str, Any]] | None = None) -> Any:
        """Start an executor; `faults` by run id are injected into its runs' tasks."""
        overrides: dict[str, Any] = {"executor": "ray", "ray_num_cpus": 2}
        if faults:
            overrides["test_faults"] = {
                run_id: RunFaults.model_validate(fault) for run_id, fault in faults.items()
            }
        settings = self.settings.model_copy(update=overrides)
        process = SPAWN.Process(
            target=run_ray_executor, args=(settings, self.semaphore), daemon=True
        )
        process.start()
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """Stop every executor gracefully, then by force."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(60)
            if process.is_alive():
                process.kill()
                process.join()


@pytest.fixture(autouse=True)
def _empty(empty_database: None) -> None:
    """Every test sees only the rows it writes."""


@pytest.fixture
def ray_executors(settings: Settings, semaphore: object) -> Iterator[RayExecutors]:
    """Start Ray executors for a test; they are stopped after it."""
    executors = RayExecutors(settings, semaphore)
    yield executors
    executors.stop_all()
