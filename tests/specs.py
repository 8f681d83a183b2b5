"""Run specs the tests share, in a module that imports nothing of the service: processes a
test spawns import it cheaply."""

from typing import Any

# The README's d2l linear regression.
D2L_SPEC: dict[str, Any] = {
    "dataset": {
        "type": "synthetic_linear",
        "n_samples": 1000,
        "true_w": [2, -3.4],
        "true_b": 4.2,
        "noise": 0.01,
    },
    "model": {"type": "linear"},
    "loss": "mse",
    "optimizer": {"type": "sgd", "lr": 0.03},
    "epochs": 3,
    "batch_size": 10,
}
