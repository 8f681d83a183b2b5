"""Peak memory of a worker training on a stored 10M x 50 dataset, end to end.

Run from the repository root: `.venv/bin/python bench/large_run.py [--rows 10000000]`.
Writes a float32 Parquet file, uploads it to `fitserve api` (SQLite and a local artifact store
in a scratch directory), trains one epoch on `fitserve worker` and reports the worker's peak
RSS growth during the run against the float32 feature matrix (the target: at most 1.3x).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import common
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BIN = Path(sys.executable).parent
BLOCK_ROWS = 1_000_000


def write_parquet(path: Path, rows: int, features: int) -> None:
    """y = X w + 0.1 noise, X ~ N(0, 1) as float32, one row group per million rows."""
    generator = np.random.default_rng(0)
    w = generator.normal(size=features).astype(np.float32)
    names = [f"x{i}" for i in range(features)]
    schema = pa.schema([(name, pa.float32()) for name in names] + [("y", pa.float32())])
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for start in range(0, rows, BLOCK_ROWS):
            block = generator.standard_normal((min(BLOCK_ROWS, rows - start), features))
            block = block.astype(np.float32)
            y = block @ w + np.float32(0.1) * generator.standard_normal(len(block), np.float32)
            columns = {name: block[:, i] for i, name in enumerate(names)} | {"y": y}
            writer.write_table(pa.table(columns, schema=schema))


def chunks(path: Path) -> Iterator[bytes]:
    """The file in 4 MiB pieces, so it is never in the client's memory at once."""
    with path.open("rb") as stream:
        while chunk := stream.read(4 << 20):
            yield chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=50)
    args = parser.parse_args()
    matrix_bytes = args.rows * args.features * 4
    print("\n".join(common.environment({"pyarrow": common.version("pyarrow")})))

    with tempfile.TemporaryDirectory(dir=Path.cwd()) as scratch_name:
        scratch = Path(scratch_name)
        data = scratch / "large.parquet"
        started = time.perf_counter()
        write_parquet(data, args.rows, args.features)
        print(f"wrote {data.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - started:.1f} s")
        port = common.free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "FITSERVE_DATABASE_URL": f"sqlite:///{scratch}/bench.db",
            "FITSERVE_ARTIFACTS": str(scratch / "artifacts"),
            "FITSERVE_PORT": str(port),
            "FITSERVE_DEVICES": "cpu",
            "FITSERVE_TORCH_THREADS": str(os.cpu_count() or 1),
        }
        subprocess.run([BIN / "fitserve", "db", "upgrade"], env=env, check=True)
        api = subprocess.Popen([BIN / "fitserve", "api"], env=env, stderr=subprocess.DEVNULL)
        worker = subprocess.Popen([BIN / "fitserve", "worker"], env=env)
        try:
            common.wait_for_health(url)
            with httpx.Client(base_url=url, timeout=3600) as client:
                started = time.perf_counter()
                uploaded = client.post(
                    "/datasets",
                    params={"target": "y"},
                    content=chunks(data),
                    headers={"content-type": "application/octet-stream"},
                )
                uploaded.raise_for_status()
                upload_seconds = time.perf_counter() - started
                worker_pid = common.child_pid(worker.pid)
                time.sleep(2)
                baseline = common.reset_peak(worker_pid)
                run = client.post(
                    "/runs",
                    json={
                        "dataset": {"type": "dataset", "id": uploaded.json()["id"], "target": "y"},
                        "model": {"type": "linear"},
                        "optimizer": {"type": "adam", "lr": 0.01},
                        "batch_size": 4096,
                        "epochs": 1,
                        "validation_split": 0.2,
                    },
                )
                run.raise_for_status()
                started = time.perf_counter()
                while (state := client.get(f"/runs/{run.json()['id']}").json())["status"] not in (
                    "succeeded",
                    "failed",
                ):
                    time.sleep(0.5)
                run_seconds = time.perf_counter() - started
                peak = common.status_bytes(worker_pid, "VmHWM")
        finally:
            worker.terminate()
            api.terminate()
            worker.wait(60)
            api.wait(60)
    if state["status"] != "succeeded":
        raise SystemExit(f"the run failed: {state.get('error')}")
    growth = peak - baseline
    print(
        f"\nupload {upload_seconds:.1f} s, run {run_seconds:.1f} s "
        f"(val_loss {state['metrics'].get('val_loss'):.4f})\n"
    )
    header = ("rows x features", "float32 matrix", "worker RSS idle", "worker peak RSS")
    print("| " + " | ".join((*header, "growth", "growth / matrix")) + " |")
    print("|---|---:|---:|---:|---:|---:|")
    cells = (
        f"{args.rows:,} x {args.features}",
        f"{matrix_bytes / 1e9:.2f} GB",
        f"{baseline / 1e9:.2f} GB",
        f"{peak / 1e9:.2f} GB",
        f"{growth / 1e9:.2f} GB",
        f"{growth / matrix_bytes:.2f}x",
    )
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
