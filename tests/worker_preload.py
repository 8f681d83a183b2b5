"""Imported once by the test workers' fork server: the worker stack, warmed up.

A spawned worker spends about 4 s importing torch and taking its first optimizer step
(which loads torch._dynamo lazily); a worker forked from here starts with both done.
"""

import torch

import tests.worker_process  # noqa: F401  (what the forked workers run)
from app.training.engine import warm_up
from app.worker import local  # noqa: F401  (imported lazily by run_worker)

# One thread: a forked child must not inherit the state of a started OpenMP pool.
torch.set_num_threads(1)
warm_up(torch.device("cpu"))
