"""The Trainer as one of two data-parallel replicas: real processes, gloo on 127.0.0.1.

One pair of spawned processes trains every case in turn (importing torch is most of their
cost); the tests compare what they sent back with single-process runs.
"""

import multiprocessing
import os
import socket
from multiprocessing.queues import Queue
from typing import Any

import pytest
import torch
from torch import distributed

from app.training.data import materialize
from app.training.engine import Replica, Trainer, estimation_error
from app.training.evaluation import EpochReport
from app.training.serialization import CheckpointBlob
from app.training.spec import RunRequest, resolve_spec
from tests.specs import D2L_SPEC as D2L

WORLD_SIZE = 2
# Batches of 3 rows split 2 + 1 between the replicas, and the last batch of 1 row leaves
# rank 1 nothing; Adam, clipping and a one-cycle schedule step on the averaged gradients.
UNEVEN: dict[str, Any] = {
    "dataset": {"type": "synthetic_linear", "n_samples": 100, "true_w": [1, 2, 3]},
    "model": {"type": "mlp", "hidden": [8]},
    "optimizer": {"type": "adam", "lr": 0.01},
    "scheduler": {"type": "onecycle", "max_lr": 0.05},
    "grad_clip_norm": 1.0,
    "standardize": True,
    "epochs": 2,
    "batch_size": 3,
}
STOP_AFTER_BATCHES = 57
Weights = dict[str, torch.Tensor]


class Hooks:
    """Counts batches, may interrupt after some, keeps a checkpoint taken after epoch 1."""

    def __init__(self, stop_after_batches: int | None = None) -> None:
        self.batches = 0
        self.stop_after_batches = stop_after_batches
        self.after_epoch_1: CheckpointBlob | None = None

    def interrupted(self) -> bool:
        return self.stop_after_batches is not None and self.batches >= self.stop_after_batches

    def before_batch(self, epoch: int, batch: int, n_batches: int) -> None:
        self.batches += 1

    def epoch_finished(self, report: EpochReport, trainer: Trainer) -> None:
        if report.epoch == 1:
            self.after_epoch_1 = trainer.checkpoint()


def trainer_for(body: dict[str, Any], replica: Replica | None = None) -> Trainer:
    spec = resolve_spec(RunRequest.model_validate(body))
    table = materialize(spec.dataset, spec.task)
    return Trainer(spec=spec, table=table, device=torch.device("cpu"), replica=replica)


def weights(trainer: Trainer) -> Weights:
    return {name: tensor.clone() for name, tensor in trainer.module.state_dict().items()}


def as_lists(tensors: Weights) -> dict[str, list]:
    """Tensors as lists, to travel between processes without torch's shared memory."""
    return {name: tensor.tolist() for name, tensor in tensors.items()}


def as_tensors(lists: dict[str, list]) -> Weights:
    return {name: torch.tensor(values) for name, values in lists.items()}


def replica_main(rank: int, port: int, results: Queue) -> None:
    """One replica: trains each case and puts what the tests check on `results`."""
    torch.set_num_threads(1)
    distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    replica = Replica(rank, WORLD_SIZE)
    try:
        d2l = trainer_for(D2L, replica)
        hooks = Hooks()
        status = d2l.run(hooks).status
        error = estimation_error(d2l)
        uneven = trainer_for(UNEVEN, replica)
        uneven.run(Hooks())
        # Only rank 1 is interrupted; rank 0 has to stop at the same batch all the same.
        interrupted = trainer_for(D2L, replica)
        stopper = Hooks(STOP_AFTER_BATCHES if rank == 1 else None)
        outcome = interrupted.run(stopper)
        results.put(
            {
                "rank": rank,
                "d2l": (status, error, as_lists(weights(d2l))),
                "checkpoint": hooks.after_epoch_1,
                "uneven": as_lists(weights(uneven)),
                "interrupted": (outcome.status, stopper.batches, interrupted.checkpoint()),
            }
        )
    finally:
        distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def replicas() -> dict[int, dict[str, Any]]:
    """What each of the two replicas sent back, by rank."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=replica_main, args=(rank, port, results), daemon=True)
        for rank in range(WORLD_SIZE)
    ]
    # Gloo picks its interface from the host name, which need not resolve in a container.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    for process in processes:
        process.start()
    try:
        sent = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    assert [process.exitcode for process in processes] == [0, 0]
    return {result["rank"]: result for result in sent}


def single_process(body: dict[str, Any]) -> Trainer:
    trainer = trainer_for(body)
    assert trainer.run(Hooks()).status == "completed"
    return trainer


def assert_close(actual: Weights, expected: Weights, tolerance: float) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=tolerance, msg=name)


def test_two_replicas_learn_d2l_as_one_process_does(replicas: dict[int, dict[str, Any]]):
    status, error, sent = replicas[0]["d2l"]
    trained = as_tensors(sent)
    assert status == "completed"
    assert max(abs(value) for value in error["w"]) < 0.01
    assert abs(error["b"]) < 0.01
    # The replicas hold the same weights, and the plain module's names (no DDP prefix).
    assert_close(as_tensors(replicas[1]["d2l"][2]), trained, 0.0)
    assert_close(trained, weights(single_process(D2L)), 1e-4)


def test_uneven_and_empty_shards_average_to_the_batch_gradient(
    replicas: dict[int, dict[str, Any]],
):
    first, second = (as_tensors(replicas[rank]["uneven"]) for rank in range(WORLD_SIZE))
    assert_close(first, second, 0.0)
    assert_close(first, weights(single_process(UNEVEN)), 1e-4)


def test_a_checkpoint_of_two_replicas_resumes_in_one_process(
    replicas: dict[int, dict[str, Any]],
):
    checkpoint = replicas[0]["checkpoint"]
    assert checkpoint is not None and checkpoint.state["progress"]["epoch"] == 1
    resumed = trainer_for(D2L)
    resumed.restore(checkpoint)
    hooks = Hooks()
    assert resumed.run(hooks).status == "completed"
    assert hooks.batches == 2 * resumed.batches_per_epoch
    assert_close(weights(resumed), weights(single_process(D2L)), 1e-4)


def test_an_interrupted_replica_stops_both_at_the_same_batch(
    replicas: dict[int, dict[str, Any]],
):
    progress = []
    for rank in range(WORLD_SIZE):
        status, batches, checkpoint = replicas[rank]["interrupted"]
        assert status == "interrupted"
        assert batches == STOP_AFTER_BATCHES
        progress.append(checkpoint.state["progress"])
    assert progress[0]["batch"] == progress[1]["batch"] == STOP_AFTER_BATCHES
    assert progress[0]["epoch"] == progress[1]["epoch"] == 0
