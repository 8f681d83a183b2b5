"""The processes of a data-parallel run: the attempt's own process is rank 0 and records;
the others (followers) train their share of each batch and record nothing.

On the local executor rank 0 starts its followers on this machine and they meet over
torch.distributed's gloo; on Ray, Ray Train starts every rank, each on a device of its own,
and sets up the process group (nccl on CUDA), and the same `follow` trains the ranks other
than 0.
"""

import logging
import multiprocessing
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from sqlalchemy.orm import Session

from app.artifacts.store import open_store
from app.config import Settings
from app.database import Database, unit_of_work
from app.datasets.service import load_table
from app.errors import ResourceError
from app.processes import exit_with_parent, stop_on_signals
from app.runs import records
from app.training.data import Table
from app.training.engine import Replica, Trainer
from app.training.evaluation import EpochReport
from app.training.serialization import CheckpointBlob
from app.training.spec import RunSpec
from app.worker.queue import Claim

logger = logging.getLogger("fitserve.worker")


class ReplicaLostError(ResourceError):
    """A process of a data-parallel run died or stopped answering: the attempt is lost."""


def is_collective_failure(error: BaseException) -> bool:
    """Whether an error is torch.distributed's report of a peer that died or hung."""
    # gloo reports a peer's closed connection as a plain RuntimeError that names it.
    text = str(error).lower()
    return isinstance(error, dist.DistError) or "gloo" in text or "nccl" in text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def local_replicas(
    *, settings: Settings, threads: int, claim: Claim, spec: RunSpec, device: torch.device
) -> Iterator[Replica | None]:
    """Start the run's followers on this machine and join them as rank 0 (None: one process).

    The worker's torch threads are shared among the replicas while they train.
    """
    world_size = spec.resources.workers
    if world_size == 1:
        yield None
        return
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    per_replica = max(1, threads // world_size)
    followers = [
        multiprocessing.get_context("spawn").Process(
            target=follow_locally,
            args=(settings, claim, Replica(rank, world_size), init_method, str(device)),
            kwargs={"threads": per_replica, "parent_pid": os.getpid()},
            name=f"fitserve-replica-{claim.run_id}-{rank}",
        )
        for rank in range(1, world_size)
    ]
    for process in followers:
        process.start()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(per_replica)
    # A follower that outlives a failed rank 0 is only waiting for it: no grace.
    grace = 0.0
    try:
        # gloo even on CUDA: the replicas share the worker's one device, which nccl refuses.
        dist.init_process_group(
            "gloo",
            init_method=init_method,
            rank=0,
            world_size=world_size,
            timeout=timedelta(seconds=settings.replica_timeout_seconds),
        )
        try:
            yield Replica(0, world_size)
            grace = settings.replica_timeout_seconds
        except RuntimeError as error:
            lost = [process.name for process in followers if not process.is_alive()]
            if lost or is_collective_failure(error):
                raise ReplicaLostError(
                    f"a process of this data-parallel run was lost ({', '.join(lost) or error})"
                ) from error
            raise
        finally:
            dist.destroy_process_group()
    finally:
        torch.set_num_threads(previous_threads)
        for process in followers:
            process.join(grace)
            if process.is_alive():
                process.kill()
                process.join()


def follow_locally(
    settings: Settings,
    claim: Claim,
    replica: Replica,
    init_method: str,
    device: str,
    *,
    threads: int,
    parent_pid: int,
) -> None:
    """Entry point of a local follower process: join the group, train, leave."""
    from app.logs import configure_logging

    exit_with_parent(parent_pid)
    configure_logging(settings)
    torch.set_num_threads(threads)
    stopping = threading.Event()
    with stop_on_signals(stopping.set):
        dist.init_process_group(
            "gloo",
            init_method=init_method,
            rank=replica.rank,
            world_size=replica.world_size,
            timeout=timedelta(seconds=settings.replica_timeout_seconds),
        )
        try:
            follow(
                settings=settings,
                claim=claim,
                replica=replica,
                device=torch.device(device),
                stopping=stopping,
            )
        except RuntimeError as error:
            if not (is_collective_failure(error) or os.getppid() != parent_pid):
                raise
            # Rank 0 records the attempt's fate; a follower only says why it stopped.
            logger.warning(
                "run %s: replica %s lost its group; stopping", claim.run_id, replica.rank
            )
        finally:
            dist.destroy_process_group()


def follow(
    *,
    settings: Settings,
    claim: Claim,
    replica: Replica,
    device: torch.device,
    stopping: threading.Event,
) -> None:
    """Train one follower's share of the run, from the same table and checkpoint as rank 0."""
    spec = RunSpec.model_validate(claim.spec)
    database = Database.connect(
        settings.database_url, sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds
    )
    store = open_store(settings)

    def read(session: Session) -> tuple[Table, CheckpointBlob | None]:
        table = load_table(session=session, store=store, dataset=spec.dataset, task=spec.task)
        return table, records.load_checkpoint(session=session, store=store, run_id=claim.run_id)

    try:
        with unit_of_work(database.read_sessions) as session:
            table, checkpoint = read(session)
    finally:
        database.dispose()
    trainer = Trainer(spec=spec, table=table, device=device, replica=replica)
    if checkpoint is not None:
        trainer.restore(checkpoint)
    trainer.run(Follower(stopping))


class Follower:
    """Hooks of a rank other than 0: stops when asked, records nothing (rank 0 records)."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping

    def interrupted(self) -> bool:
        """Stop when this process is asked to; the ranks agree on it at the next batch."""
        return self._stopping.is_set()

    def before_batch(self, epoch: int, batch: int, n_batches: int) -> None:
        """Faults strike rank 0 only."""

    def epoch_finished(self, report: EpochReport, trainer: Trainer) -> None:
        """Rank 0 records the epoch."""
