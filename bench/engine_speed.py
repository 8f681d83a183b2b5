"""The training engine against a bare PyTorch loop, side by side in one run.

Usage: .venv/bin/python bench/engine_speed.py [--samples 3] [--seed 1] [--parts abc]
                                              [--rows 90000] [--features 20] [--epochs 10]
                                              [--wide-rows 100000] [--wide-epochs 3]

The workload: a seeded 90,000 x 20 regression CSV (y = Xw + noise), an MLP with one hidden
layer of 64 ReLU units, MSE, Adam lr 1e-3, batch 256, 10 epochs. The bare loop is what one
would write by hand: read the CSV (pyarrow), make tensors, then per epoch one `torch.randperm`,
the rows copied into that order, and contiguous slices of them as batches; torch's default
threads, as the server's only worker has on this machine (the cores divided among the local
workers).

a. End to end: a real `fitserve serve` (SQLite and an artifact store in a temporary folder,
   default settings) with the CSV uploaded first; timed from just before `POST /runs` until
   the run's event stream (`GET /runs/{id}/events`, no polling by the client) says it
   succeeded; the server's own `finished_at - created_at` is shown too. Against it, the bare
   loop in this process, reading the CSV itself. One untimed run of each warms up first.
b. In process, on the same tensors: the bare loop (without reading the CSV), and with torch's
   fused Adam as the Trainer uses (the like-for-like baseline of the hooks' cost); the Trainer's
   batch loop alone (the sum of its epochs' `seconds`, which exclude the per-epoch
   evaluation), with `Uninterrupted` hooks; and the whole Trainer, built and run.
c. Options, in process through the Trainer: eager or `compile`, fp32 or `precision` bf16, on
   that MLP and a wider one (hidden [512, 512], --wide-rows x 100, --wide-epochs). The
   steady epoch is the median epoch after the first (whose time includes compiling).

Samples of the configurations of each part are interleaved in a seeded random order; each cell
is the median (min-max) over --samples samples; the ratios are of medians and of minimums (the
least disturbed samples). The machine may be shared: only ratios of one run mean anything.
"""

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
from common import Spread, environment, free_port, sample_order
from torch import nn

from app.training.data import Table
from app.training.engine import Trainer, Uninterrupted
from app.training.evaluation import EpochReport
from app.training.spec import RunRequest, resolve_spec

BIN = Path(sys.executable).parent
FINAL = ("succeeded", "failed", "cancelled")
STORED = {"type": "dataset", "id": 1, "target": "y"}


@dataclass(frozen=True)
class Workload:
    """The regression MLP every part trains."""

    rows: int
    features: int
    hidden: tuple[int, ...]
    epochs: int
    batch_size: int = 256
    lr: float = 1e-3

    def body(self, dataset: dict[str, Any], **options: Any) -> dict[str, Any]:
        """The run's JSON body on `dataset`."""
        return {
            "dataset": dataset,
            "model": {"type": "mlp", "hidden": list(self.hidden)},
            "loss": "mse",
            "optimizer": {"type": "adam", "lr": self.lr},
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            **options,
        }


def make_data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 features ~ N(0, 1) and y = Xw + 0.1 noise."""
    generator = np.random.default_rng(seed)
    x = generator.standard_normal((rows, features), dtype=np.float32)
    w = generator.standard_normal(features, dtype=np.float32)
    y = x @ w + np.float32(0.1) * generator.standard_normal(rows, dtype=np.float32)
    return x, y


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """The table as CSV: columns x0..x{n-1}, then y."""
    columns = {f"x{i}": x[:, i] for i in range(x.shape[1])} | {"y": y}
    pacsv.write_csv(pa.table(columns), path)


def read_csv(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and target of the CSV as float32 tensors."""
    table = pacsv.read_csv(path)
    names = [name for name in table.column_names if name != "y"]
    x = np.column_stack([table.column(name).to_numpy() for name in names]).astype(np.float32)
    y = table.column("y").to_numpy().astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def bare_loop(
    x: torch.Tensor, y: torch.Tensor, workload: Workload, *, fused: bool = False, seed: int = 0
) -> nn.Module:
    """Train the workload by hand, as one would without fitserve; returns the network.

    `fused` picks torch's fused Adam, as the Trainer does, instead of torch's default.
    """
    torch.manual_seed(seed)
    widths = [x.shape[1], *workload.hidden]
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=workload.lr, fused=fused)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(seed)
    n_rows, batch = x.shape[0], workload.batch_size
    for _epoch in range(workload.epochs):
        order = torch.randperm(n_rows, generator=generator)
        shuffled_x, shuffled_y = x[order], y[order]
        for start in range(0, n_rows, batch):
            optimizer.zero_grad(set_to_none=True)
            output = model(shuffled_x[start : start + batch]).squeeze(-1)
            loss = loss_fn(output, shuffled_y[start : start + batch])
            loss.backward()
            optimizer.step()
    return model


def timed(work: Callable[[], object]) -> float:
    """Seconds `work` takes."""
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


class Seconds(Uninterrupted):
    """Uninterrupted hooks that add up the epochs' training seconds (evaluation excluded)."""

    def __init__(self) -> None:
        self.epochs: list[float] = []

    def epoch_finished(self, report: EpochReport, trainer: Trainer) -> None:
        """Keep the epoch's seconds."""
        self.epochs.append(report.seconds)


def trainer_run(table: Table, body: dict[str, Any]) -> tuple[float, list[float]]:
    """Build and run a Trainer; its wall seconds and each epoch's training seconds."""
    spec = resolve_spec(RunRequest.model_validate(body), dataset_task="regression")
    hooks = Seconds()
    started = time.perf_counter()
    trainer = Trainer(spec=spec, table=table, device=torch.device("cpu"))
    outcome = trainer.run(hooks)
    seconds = time.perf_counter() - started
    assert outcome.status == "completed", outcome
    return seconds, hooks.epochs


def samples_table(
    title: str,
    columns: tuple[str, ...],
    rows: dict[str, dict[str, list[float]]],
    baseline: tuple[str, str],
) -> list[str]:
    """A markdown table: one row per configuration, median (min-max) per column, two ratios.

    The ratio of medians, and of minimums: on a shared machine other processes only ever add
    time, so each configuration's fastest sample is the one least disturbed.
    """
    name, column = baseline
    base = rows[name][column]
    lines = [
        f"**{title}**",
        "",
        "| configuration | "
        + " | ".join(columns)
        + f" | {column} / baseline (medians) | (minimums) |",
        "|---|" + "---:|" * (len(columns) + 2),
    ]
    for row, values in rows.items():
        cells = [Spread.of(values[key]).format(3) if key in values else "" for key in columns]
        ratios = ["", ""]
        if column in values:
            median = statistics.median(values[column]) / statistics.median(base)
            ratios = [f"{median:.3f}x", f"{min(values[column]) / min(base):.3f}x"]
        lines.append(f"| {row} | " + " | ".join([*cells, *ratios]) + " |")
    return [*lines, ""]


@contextmanager
def fitserve_serve(scratch: Path) -> Iterator[str]:
    """A `fitserve serve` on a new SQLite database in `scratch`; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "FITSERVE_DATABASE_URL": f"sqlite:///{scratch}/bench.db",
        "FITSERVE_ARTIFACTS": str(scratch / "artifacts"),
        "FITSERVE_PORT": str(port),
        "FITSERVE_DEVICES": "cpu",
        "FITSERVE_AUTH": "off",
    }
    subprocess.run([BIN / "fitserve", "db", "upgrade"], env=env, check=True, capture_output=True)
    log = (scratch / "serve.log").open("wb")
    server = subprocess.Popen(
        [BIN / "fitserve", "serve"], env=env, stdout=log, stderr=log, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError((scratch / "serve.log").read_text()[-3000:])
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("fitserve serve did not start")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        log.close()


def end_to_end(client: httpx.Client, body: dict[str, Any]) -> tuple[float, float]:
    """POST /runs until its event stream says it ended: client seconds, server seconds."""
    started = time.perf_counter()
    run = client.post("/runs", json=body)
    run.raise_for_status()
    run_id = run.json()["id"]
    # The stream, not polling: a GET every few milliseconds would take CPU from training.
    with client.stream("GET", f"/runs/{run_id}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("status") in FINAL:
                break
    seconds = time.perf_counter() - started
    state = client.get(f"/runs/{run_id}").json()
    if state["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} {state['status']}: {state.get('error')}")
    created, finished = (
        datetime.fromisoformat(state[key]) for key in ("created_at", "finished_at")
    )
    return seconds, (finished - created).total_seconds()


def part_a(workload: Workload, scratch: Path, samples: int, seed: int) -> list[str]:
    """End to end through the server against the bare loop reading the CSV."""
    x, y = make_data(workload.rows, workload.features, seed)
    csv = scratch / "table.csv"
    write_csv(csv, x, y)
    rows: dict[str, dict[str, list[float]]] = {
        "bare loop (read CSV, train)": {"seconds": []},
        "fitserve serve: POST /runs -> succeeded": {"seconds": [], "server seconds": []},
    }
    with fitserve_serve(scratch) as url, httpx.Client(base_url=url, timeout=600) as client:
        uploaded = client.post(
            "/datasets",
            params={"target": "y"},
            content=csv.read_bytes(),
            headers={"content-type": "text/csv"},
        )
        uploaded.raise_for_status()
        dataset = {"type": "dataset", "id": uploaded.json()["id"], "target": "y"}
        warm = Workload(workload.rows, workload.features, workload.hidden, epochs=1)
        end_to_end(client, warm.body(dataset))
        bare_loop(*read_csv(csv), warm)
        for name, _sample in sample_order(list(rows), samples, seed):
            if name.startswith("bare"):
                rows[name]["seconds"].append(timed(lambda: bare_loop(*read_csv(csv), workload)))
            else:
                client_seconds, server_seconds = end_to_end(client, workload.body(dataset))
                rows[name]["seconds"].append(client_seconds)
                rows[name]["server seconds"].append(server_seconds)
    return samples_table(
        f"a. end to end: {workload.rows:,} x {workload.features}, {describe(workload)}",
        ("seconds", "server seconds"),
        rows,
        ("bare loop (read CSV, train)", "seconds"),
    )


def part_b(workload: Workload, samples: int, seed: int) -> list[str]:
    """The Trainer's batch loop and the whole Trainer against the bare loop, same tensors."""
    x, y = (torch.from_numpy(part) for part in make_data(workload.rows, workload.features, seed))
    table = Table(x, y)
    body = workload.body(STORED)
    bare, fused = "bare loop", "bare loop, fused Adam (as the Trainer's)"
    loop, whole = "Trainer batch loop (Uninterrupted)", "Trainer, whole"
    rows: dict[str, dict[str, list[float]]] = {
        name: {"seconds": []} for name in (bare, fused, loop, whole)
    }
    bare_loop(x, y, Workload(workload.rows, workload.features, workload.hidden, epochs=1))
    for name, _sample in sample_order([bare, fused, whole], samples, seed):
        if name in (bare, fused):
            work = partial(bare_loop, x, y, workload, fused=name == fused)
            rows[name]["seconds"].append(timed(work))
        else:
            seconds, epochs = trainer_run(table, body)
            rows[whole]["seconds"].append(seconds)
            rows[loop]["seconds"].append(sum(epochs))
    hooks = [
        f"{statistic}: {function(rows[loop]['seconds']) / function(rows[fused]['seconds']):.3f}x"
        for statistic, function in (("medians", statistics.median), ("minimums", min))
    ]
    return [
        *samples_table(
            f"b. in process, same tensors: {workload.rows:,} x {workload.features}, "
            f"{describe(workload)}",
            ("seconds",),
            rows,
            (bare, "seconds"),
        ),
        "Hooks and bookkeeping, the Trainer's batch loop over the bare loop with the same "
        "(fused) Adam: " + ", ".join(hooks),
        "",
    ]


def part_c(workloads: list[Workload], samples: int, seed: int) -> list[str]:
    """Eager or compiled, fp32 or bf16: the Trainer's steady epoch and its first."""
    options = {
        "eager, fp32": {},
        "compile, fp32": {"compile": True},
        "eager, bf16": {"precision": "bf16"},
        "compile, bf16": {"compile": True, "precision": "bf16"},
    }
    lines: list[str] = []
    for workload in workloads:
        x, y = (torch.from_numpy(p) for p in make_data(workload.rows, workload.features, seed))
        table = Table(x, y)
        rows: dict[str, dict[str, list[float]]] = {
            name: {"steady epoch": [], "first epoch": []} for name in options
        }
        # One compilation, untimed, fills inductor's cache as a long-lived worker's would be.
        trainer_run(table, workload.body(STORED, epochs=1, compile=True))
        for name, _sample in sample_order(list(options), samples, seed):
            _seconds, epochs = trainer_run(table, workload.body(STORED, **options[name]))
            rows[name]["first epoch"].append(epochs[0])
            rows[name]["steady epoch"].append(statistics.median(epochs[1:]))
        lines += samples_table(
            f"c. options: {workload.rows:,} x {workload.features}, {describe(workload)}",
            ("steady epoch", "first epoch"),
            rows,
            ("eager, fp32", "steady epoch"),
        )
    return lines


def describe(workload: Workload) -> str:
    """The workload in words."""
    return (
        f"MLP hidden {list(workload.hidden)}, Adam lr {workload.lr:g}, "
        f"batch {workload.batch_size}, {workload.epochs} epochs, {torch.get_num_threads()} threads"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parts", default="abc", help="which parts to run: a, b and/or c")
    parser.add_argument("--rows", type=int, default=90_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--wide-rows", type=int, default=100_000)
    parser.add_argument("--wide-epochs", type=int, default=3)
    args = parser.parse_args()
    print("\n".join(environment({"numpy": np.__version__, "pyarrow": pa.__version__})))
    print()
    workload = Workload(args.rows, args.features, (64,), args.epochs)
    if "a" in args.parts:
        with tempfile.TemporaryDirectory(prefix="fitserve-engine-speed-") as scratch:
            print("\n".join(part_a(workload, Path(scratch), args.samples, args.seed)), flush=True)
    if "b" in args.parts:
        print("\n".join(part_b(workload, args.samples, args.seed)), flush=True)
    if "c" in args.parts:
        wide = Workload(args.wide_rows, 100, (512, 512), args.wide_epochs)
        print("\n".join(part_c([workload, wide], args.samples, args.seed)), flush=True)


if __name__ == "__main__":
    main()
