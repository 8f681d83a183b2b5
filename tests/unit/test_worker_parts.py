"""Parts of the worker that need no process: failure classification, supervised threads."""

import logging
import os
import threading
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from app.config import Settings
from app.datasets.ingest import DatasetInputError
from app.errors import InvalidInputError, ResourceError
from app.runs.models import FailureKind
from app.worker.failures import DeviceUnavailableError, describe, failure_kind
from app.worker.threads import supervised


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidInputError("validation_split leaves no training rows"), "invalid_input"),
        (DatasetInputError(("dataset", "id"), "dataset 3 no longer exists"), "invalid_input"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "resources"),
        (torch.AcceleratorError("CUDA error: an illegal memory access"), "resources"),
        (MemoryError(), "resources"),
        (ResourceError("device lost"), "resources"),
        (DeviceUnavailableError("torch sees no CUDA device"), "resources"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "internal"),
        (ValueError("something fitserve got wrong"), "internal"),
    ],
)
def test_failures_are_sorted_by_their_type_not_their_builtin_base(error, kind):
    # An out-of-memory error is a RuntimeError, as many of torch's are; that must not make
    # it the user's fault.
    assert failure_kind(error) == FailureKind(kind)


def test_the_error_text_names_the_type_unless_it_is_the_users_input():
    assert describe(InvalidInputError("no rows")) == "no rows"
    assert describe(torch.OutOfMemoryError("CUDA out of memory")) == (
        "OutOfMemoryError: CUDA out of memory"
    )


def test_a_supervised_thread_that_raises_is_logged_and_restarted(caplog):
    calls: list[int] = []
    done = threading.Event()
    stop = threading.Event()

    def body() -> None:
        calls.append(len(calls))
        if len(calls) < 3:
            raise RuntimeError(f"failure {len(calls)}")
        done.set()

    with caplog.at_level(logging.ERROR, logger="fitserve.worker"):
        thread = supervised(body, name="flaky", stop=stop, restart_delay=0.01)
        assert done.wait(5)
        thread.join(5)
    assert calls == [0, 1, 2]
    assert not thread.is_alive()
    failures = [record for record in caplog.records if "thread flaky failed" in record.message]
    assert len(failures) == 2
    assert failures[0].exc_info is not None


def test_a_supervised_thread_stops_restarting_once_asked_to_stop():
    stop = threading.Event()
    calls: list[int] = []

    def body() -> None:
        calls.append(1)
        stop.set()
        raise RuntimeError("dies while stopping")

    thread = supervised(body, name="stopping", stop=stop, restart_delay=0.01)
    thread.join(5)
    assert calls == [1]


def test_a_misspelt_fault_is_refused_rather_than_injecting_nothing():
    with pytest.raises(ValidationError, match="kill_at_epoc"):
        Settings(test_faults={"3": {"kill_at_epoc": 2}})
    assert Settings(test_faults={"3": {"kill_at_epoch": 2}}).test_faults[3].kill_at_epoch == 2


def test_sqlite_waits_for_its_lock_for_at_most_half_a_lease():
    with pytest.raises(ValidationError, match="at most half of lease_seconds"):
        Settings(lease_seconds=3, sqlite_busy_timeout_seconds=2)
    assert Settings(lease_seconds=3, sqlite_busy_timeout_seconds=1.5).sqlite_busy_timeout_seconds


def test_torch_threads_default_to_the_cores_shared_among_local_workers() -> None:
    cores = os.cpu_count() or 1
    assert Settings().threads_per_worker(1) == cores
    assert Settings().threads_per_worker(cores * 2) == 1
    assert Settings(torch_threads=3).threads_per_worker(8) == 3


def test_anchored_settings_name_the_sqlite_file_and_the_store_absolutely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    anchored = Settings(database_url="sqlite:///./runs.db?timeout=5").anchored()
    assert anchored.database_url == f"sqlite:///{tmp_path / 'runs.db'}?timeout=5"
    assert anchored.artifacts == str(tmp_path / "fitserve-artifacts")
    remote = Settings(database_url="postgresql+psycopg://db/x", artifacts="s3://b/p").anchored()
    assert (remote.database_url, remote.artifacts) == ("postgresql+psycopg://db/x", "s3://b/p")
