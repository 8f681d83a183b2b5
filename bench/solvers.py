"""Linear least squares, side by side in one run: fitserve closed_form and lbfgs vs scikit-learn.

Usage: .venv/bin/python bench/solvers.py [--sizes 100000x20,1000000x50] [--samples 3] [--seed 1]
scikit-learn is not a dependency of fitserve: `.venv/bin/pip install -e ".[bench]"` first.

For each size, one seeded table: features with scales from 1e-2 to 1e3 and non-zero means, a
target in the hundreds with noise. The reference is float64 `numpy.linalg.lstsq` on the float64
table with a column of ones. fitserve trains through its `Trainer` on CPU from float32 tensors,
as a worker holds a table (the float32 copy is made before timing); scikit-learn's
`LinearRegression` fits the float64 table. Each solver runs --samples times in a seeded random
order, after one untimed call; the table shows the median seconds (min-max), scikit-learn's
median over the solver's, and the largest relative difference of any coefficient (weights and
intercept) to the reference, |ours - lstsq| / |lstsq|. Printed and written under
bench/results/ with the environment above it.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import Spread, environment, sample_order

from app.training.data import Table
from app.training.engine import Trainer, Uninterrupted
from app.training.solvers import linear_coefficients
from app.training.spec import RunRequest, resolve_spec

ROOT = Path(__file__).resolve().parent.parent
STORED = {"type": "dataset", "id": 1, "target": "y"}
SOLVERS: dict[str, dict] = {
    "fitserve `closed_form`": {"optimizer": {"type": "closed_form"}},
    "fitserve `lbfgs`, standardize, 5 epochs": {
        "optimizer": {"type": "lbfgs"},
        "standardize": True,
        "epochs": 5,
    },
}
SKLEARN = "scikit-learn `LinearRegression` (float64)"
LSTSQ = "numpy `lstsq` (float64, the reference)"


def make_table(n_rows: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of very different scales and offsets; y = Xw + 300 + noise, w all non-zero."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(-2, 3, n_features)
    features = rng.normal(size=(n_rows, n_features)) * scales + rng.normal(size=n_features) * scales
    signs = rng.choice([-1.0, 1.0], size=n_features)
    weights = signs * rng.uniform(0.5, 2.0, size=n_features) * 10 / scales
    targets = 300 + features @ weights + rng.normal(size=n_rows) * 10
    return features, targets


def fitserve(body: dict, table: Table) -> Callable[[], np.ndarray]:
    """A solver that trains `body` on the table through the Trainer; returns [w..., b]."""
    spec = resolve_spec(
        RunRequest.model_validate({"dataset": STORED, **body}), dataset_task="regression"
    )

    def solve() -> np.ndarray:
        trainer = Trainer(spec=spec, table=table, device=torch.device("cpu"))
        outcome = trainer.run(Uninterrupted())
        assert outcome.status == "completed", outcome
        weights, bias = linear_coefficients(trainer.module)
        return np.append(weights.numpy(), bias)

    return solve


def sklearn_solver(features: np.ndarray, targets: np.ndarray) -> Callable[[], np.ndarray]:
    """scikit-learn's LinearRegression on the float64 table."""
    from sklearn.linear_model import LinearRegression

    def solve() -> np.ndarray:
        model = LinearRegression().fit(features, targets)
        return np.append(model.coef_, model.intercept_)

    return solve


def lstsq_solver(features: np.ndarray, targets: np.ndarray) -> Callable[[], np.ndarray]:
    """Float64 least squares with a column of ones for the intercept."""

    def solve() -> np.ndarray:
        design = np.column_stack([features, np.ones(len(features))])
        return np.linalg.lstsq(design, targets, rcond=None)[0]

    return solve


def bench_size(n_rows: int, n_features: int, samples: int, seed: int) -> list[str]:
    """Markdown rows for one table size."""
    features, targets = make_table(n_rows, n_features, seed)
    table = Table(
        torch.from_numpy(features.astype(np.float32)), torch.from_numpy(targets.astype(np.float32))
    )
    solvers = {name: fitserve(body, table) for name, body in SOLVERS.items()}
    solvers[SKLEARN] = sklearn_solver(features, targets)
    solvers[LSTSQ] = lstsq_solver(features, targets)
    reference = solvers[LSTSQ]()
    # One untimed call each first: torch and LAPACK set themselves up on first use.
    errors = {
        name: float(np.max(np.abs(solve() - reference) / np.abs(reference)))
        for name, solve in solvers.items()
    }
    seconds: dict[str, list[float]] = {name: [] for name in solvers}
    for name, _ in sample_order(list(solvers), samples, seed):
        started = time.perf_counter()
        solvers[name]()
        seconds[name].append(time.perf_counter() - started)
    sklearn_median = statistics.median(seconds[SKLEARN])
    rows = []
    for name in solvers:
        spread = Spread.of(seconds[name])
        rows.append(
            f"| {n_rows:,} x {n_features} | {name} | {spread.format(3)} | "
            f"{sklearn_median / spread.median:.2f}x | {errors[name]:.1e} |"
        )
    return rows


def main() -> None:
    """Solve every size with every solver, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000x20,1000000x50", help="ROWSxFEATURES,...")
    parser.add_argument("--samples", type=int, default=3, help="timed runs per solver")
    parser.add_argument("--seed", type=int, default=1, help="seeds the tables and the order")
    args = parser.parse_args()
    import sklearn

    header = environment({"numpy": np.__version__, "scikit-learn": sklearn.__version__})
    header.append(f"torch threads: {torch.get_num_threads()}")
    print("\n".join(header), flush=True)
    lines = [
        "| rows x features | solver | seconds, median (min-max) | sklearn time / this "
        "| max relative coefficient difference to lstsq |",
        "|---|---|---|---|---|",
    ]
    for size in args.sizes.split(","):
        n_rows, n_features = (int(part) for part in size.split("x"))
        lines.extend(bench_size(n_rows, n_features, args.samples, args.seed))
        print("\n".join(lines[-len(SOLVERS) - 2 :]), flush=True)
    text = "\n".join([*header, "", *lines])
    print()
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"solvers-{datetime.now(UTC):%Y%m%dT%H%M%S}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
