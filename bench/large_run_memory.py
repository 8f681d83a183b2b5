"""Peak memory of one large training run against its float32 feature matrix, before and after.

Usage: .venv/bin/python bench/large_run_memory.py [--rows 10000000 --features 50]
       [--model linear|mlp] [--no-standardize]

Writes a seeded float32 feature matrix (rows x features, row-major, no header) and its
targets to a temporary directory, then trains once per mode, each in a fresh subprocess:
Adam, batch 4096, 1 epoch, validation_split 0.2. The subprocess maps the matrix file with
mmap ACCESS_COPY (writable, copy on write, so torch.from_numpy does not warn), builds the
Table over it without reading it, and measures the growth of its peak RSS from just before
the Trainer is built to the end of the run: VmHWM after minus VmRSS before (VmHWM is reset
first through /proc/self/clear_refs). Pages of the matrix that training reads count as
they are mapped in, so a trainer that reads every row once grows by at least 1x the matrix.

Modes: `copy` copies the training and validation rows out of the table right after the
Trainer is built, as Trainer.__init__ did before it indexed the table; `index` is the engine
as it is. Linux only (/proc).
"""

import argparse
import json
import mmap
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import environment

WRITE_CHUNK_ROWS = 1_000_000
MODES = {
    "copy": "parts copied (before)",
    "index": "rows indexed (after)",
}


def write_table(directory: Path, rows: int, features: int) -> None:
    """A linear target with noise from standard normal features, written chunk by chunk."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=features).astype(np.float32)
    matrix = np.memmap(
        directory / "features.f32", dtype=np.float32, mode="w+", shape=(rows, features)
    )
    targets = np.empty(rows, dtype=np.float32)
    for start in range(0, rows, WRITE_CHUNK_ROWS):
        stop = min(start + WRITE_CHUNK_ROWS, rows)
        block = rng.standard_normal((stop - start, features), dtype=np.float32)
        matrix[start:stop] = block
        targets[start:stop] = block @ weights + 0.5 + rng.standard_normal(stop - start) * 0.1
    matrix.flush()
    del matrix
    np.save(directory / "targets.npy", targets)


def kib(field: str) -> int:
    """A field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def measure(args: argparse.Namespace) -> dict[str, float]:
    """In the subprocess: train once over the mapped matrix and measure peak RSS growth."""
    import torch

    from app.training.data import RowSubset, Table
    from app.training.engine import Trainer, Uninterrupted, warm_up
    from app.training.spec import RunRequest, resolve_spec

    directory = Path(args.directory)
    targets = torch.from_numpy(np.load(directory / "targets.npy"))
    with open(directory / "features.f32", "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    matrix = np.frombuffer(mapped, dtype=np.float32).reshape(args.rows, args.features)
    table = Table(torch.from_numpy(matrix), targets)
    model = {"type": "linear"} if args.model == "linear" else {"type": "mlp", "hidden": [64]}
    body = {
        "dataset": {"type": "dataset", "id": 1, "target": "y"},
        "model": model,
        "optimizer": {"type": "adam", "lr": 0.001},
        "batch_size": 4096,
        "epochs": 1,
        "validation_split": 0.2,
        "standardize": args.standardize,
    }
    spec = resolve_spec(RunRequest.model_validate(body), dataset_task="regression")
    # As a worker does before its first run: torch's lazy imports are not the run's memory.
    warm_up(torch.device("cpu"))

    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM starts again from the current RSS
    before = kib("VmRSS")
    started = time.perf_counter()
    trainer = Trainer(spec=spec, table=table, device=torch.device("cpu"))
    if args.mode == "copy":
        trainer.train_x = RowSubset(table.features[trainer.train_x.index])
        trainer.val_x = RowSubset(table.features[trainer.val_x.index])
    outcome = trainer.run(Uninterrupted())
    seconds = time.perf_counter() - started
    assert outcome.status == "completed" and outcome.last_report is not None
    return {
        "growth": (kib("VmHWM") - before) * 1024,
        "matrix": table.features.nbytes,
        "seconds": seconds,
        "val_loss": outcome.last_report.val_loss,
    }


def main() -> None:
    """Write the table, measure each mode in a fresh subprocess, print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--model", choices=["linear", "mlp"], default="linear")
    parser.add_argument("--no-standardize", dest="standardize", action="store_false")
    parser.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        print(json.dumps(measure(args)))
        return

    for line in environment():
        print(line)
    print()
    print(
        f"{args.rows:,} rows x {args.features} features, {args.model}, Adam, batch 4096, "
        f"1 epoch, validation_split 0.2, standardize {args.standardize}"
    )
    print()
    print("| trainer | matrix | peak RSS growth | ratio | seconds | val_loss |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="fitserve-large-run-") as directory:
        write_table(Path(directory), args.rows, args.features)
        for mode, label in MODES.items():
            command = [
                sys.executable,
                __file__,
                *("--rows", str(args.rows), "--features", str(args.features)),
                *("--model", args.model, "--mode", mode, "--directory", directory),
                *([] if args.standardize else ["--no-standardize"]),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=False)
            if output.returncode != 0:
                sys.exit(f"{mode} failed:\n{output.stderr}")
            result = json.loads(output.stdout.splitlines()[-1])
            matrix, growth = result["matrix"], result["growth"]
            print(
                f"| {label} | {matrix / 2**30:.2f} GiB | {growth / 2**30:.2f} GiB "
                f"| {growth / matrix:.2f}x | {result['seconds']:.1f} | {result['val_loss']:.6g} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
