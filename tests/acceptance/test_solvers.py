"""Direct and iterative solvers on a real regression table, through the API and real workers."""

import csv
from importlib import resources

import httpx
import numpy as np

from tests.helpers import LocalWorkers, post_run, wait_for


def diabetes() -> tuple[np.ndarray, np.ndarray]:
    """The builtin diabetes table as float64 features and target."""
    text = resources.files("app.datasets").joinpath("builtin", "diabetes.csv").read_text()
    rows = list(csv.reader(text.splitlines()))[1:]
    table = np.array(rows, dtype=np.float64)
    return table[:, :-1], table[:, -1]


def test_adam_with_standardize_reaches_the_closed_form_on_diabetes(
    client: httpx.Client, workers: LocalWorkers
) -> None:
    workers.start()
    stored = client.post("/datasets/builtin/diabetes")
    assert stored.status_code in (200, 201), stored.text
    table = {"type": "dataset", "id": stored.json()["id"], "target": "progression"}
    exact = post_run(client, {"dataset": table, "optimizer": {"type": "closed_form"}})
    adam = post_run(
        client,
        {
            "dataset": table,
            "standardize": True,
            "optimizer": {"type": "adam", "lr": 0.05},
            "scheduler": {"type": "cosine"},
            "epochs": 60,
            "batch_size": 32,
        },
    )
    exact, adam = wait_for(client, exact["id"]), wait_for(client, adam["id"])
    assert (exact["status"], adam["status"]) == ("succeeded", "succeeded")
    assert exact["progress"]["epochs"] == 1
    assert abs(exact["metrics"]["train_r2"] - adam["metrics"]["train_r2"]) <= 0.005

    # The direct solve is float64 least squares, read back through predictions: f(0) is the
    # intercept and (f(s e_i) - f(0)) / s the i-th coefficient; a large s keeps float32's
    # rounding of f (the intercept is about -330) far below the smallest coefficient.
    features, target = diabetes()
    design = np.column_stack([features, np.ones(len(features))])
    coefficients = np.linalg.lstsq(design, target, rcond=None)[0]
    width = features.shape[1]
    scale = 1000.0
    probes = [[0.0] * width] + [[scale * (i == j) for j in range(width)] for i in range(width)]
    answer = client.post(f"/runs/{exact['id']}/predict", json={"inputs": probes})
    assert answer.status_code == 200, answer.text
    predicted = np.array(answer.json()["predictions"], dtype=np.float64)
    learned = np.append((predicted[1:] - predicted[0]) / scale, predicted[0])
    relative = np.abs(learned - coefficients) / np.abs(coefficients)
    assert relative.max() <= 1e-4, (learned, coefficients)
