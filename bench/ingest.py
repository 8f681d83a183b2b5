"""Ingest a ~100 MB numeric CSV through the API and compare with pandas, pyarrow and polars.

Run from the repository root: `.venv/bin/python bench/ingest.py [--megabytes 100] [--samples 3]
[--seed 1]`. pandas and polars are not dependencies of fitserve: `.venv/bin/pip install pandas
polars` first (the dev extra has them).

Every sample runs in a fresh process, in a seeded random order: an upload in a new `fitserve api`
on a new SQLite file (so no upload is a deduplicated one), each library's `read_csv` in a child
process of its own. Each process first handles a tiny file (a warm-up upload or read), so lazy
imports and set-up are not timed. Time is wall clock, the upload's as the client sees it (HTTP,
spooling, sha256, parse, checks, statistics, storing). Memory is the growth of the process's
peak RSS (VmHWM, reset through /proc/PID/clear_refs) over its resident size just before the
timed operation.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from common import (
    Spread,
    child_pid,
    environment,
    free_port,
    reset_peak,
    sample_order,
    status_bytes,
    version,
)

FEATURES = 10
BIN = Path(sys.executable).parent
UPLOADS = ("fitserve upload, file as body", "fitserve upload, multipart (as curl -F)")
LIBRARIES = {
    "pandas": "pandas.read_csv",
    "pyarrow": "pyarrow.csv.read_csv",
    "polars": "polars.read_csv",
}


def write_csv(path: Path, megabytes: int) -> int:
    """Random numbers with 6 decimals in 10 feature columns and a target; returns the row count."""
    generator = np.random.default_rng(0)
    names = [f"x{i}" for i in range(FEATURES)] + ["y"]
    rows = 0
    with pacsv.CSVWriter(path, pa.schema([(name, pa.float64()) for name in names])) as writer:
        while path.stat().st_size < megabytes * 1_000_000:
            block = np.round(generator.normal(size=(100_000, len(names))), 6)
            writer.write_table(pa.table({name: block[:, i] for i, name in enumerate(names)}))
            rows += len(block)
    return rows


def chunks(path: Path) -> Iterator[bytes]:
    """The file in 1 MiB pieces, so httpx sends it chunked with no Content-Length."""
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            yield chunk


def upload_raw(client: httpx.Client, path: Path) -> httpx.Response:
    """POST the file as the body (options in the query)."""
    return client.post(
        "/datasets",
        params={"target": "y"},
        content=chunks(path),
        headers={"content-type": "text/csv"},
    )


def upload_multipart(client: httpx.Client, path: Path) -> httpx.Response:
    """POST the file as multipart/form-data (as `curl -F` does), with other options."""
    with path.open("rb") as stream:
        return client.post(
            "/datasets",
            files={"file": ("numbers.csv", stream, "text/csv")},
            data={"target": "y", "missing": "drop"},
        )


def measure_upload(
    upload: Callable[[httpx.Client, Path], httpx.Response], path: Path, rows: int, scratch: Path
) -> dict[str, float]:
    """Seconds and peak RSS growth of one upload into a fresh API on a fresh database."""
    port = free_port()
    env = {
        **os.environ,
        "FITSERVE_DATABASE_URL": f"sqlite:///{scratch}/bench.db",
        "FITSERVE_PORT": str(port),
    }
    subprocess.run([BIN / "fitserve", "db", "upgrade"], env=env, check=True, capture_output=True)
    server = subprocess.Popen([BIN / "fitserve", "api"], env=env, stderr=subprocess.DEVNULL)
    try:
        api_pid = child_pid(server.pid)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            while True:
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            # Warm up: the first upload imports and allocates what every later one reuses.
            warm = client.post(
                "/datasets", files={"file": ("w.csv", b"a,y\n1,2\n3,4\n")}, data={"target": "y"}
            )
            warm.raise_for_status()
            before = reset_peak(api_pid)
            started = time.perf_counter()
            response = upload(client, path)
            seconds = time.perf_counter() - started
            peak = status_bytes(api_pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(30)
    response.raise_for_status()
    assert response.json()["n_rows"] == rows, response.text
    return {"seconds": seconds, "growth": peak - before}


def read_in_child(library: str, path: Path) -> None:
    """Run in a child process: read the file with one library, print seconds and RSS growth."""
    if library == "pandas":
        import pandas

        def read(source: Path) -> int:
            return len(pandas.read_csv(source))
    elif library == "pyarrow":

        def read(source: Path) -> int:
            return pacsv.read_csv(source).num_rows
    else:
        import polars

        def read(source: Path) -> int:
            return polars.read_csv(source).height

    # Warm up as the API is warmed up: a first read imports and sets up what later ones reuse.
    small = path.with_name(f"warm-up-{library}.csv")
    small.write_bytes(b"a,y\n1,2\n3,4\n")
    read(small)
    pid = os.getpid()
    before = reset_peak(pid)
    started = time.perf_counter()
    rows = read(path)
    seconds = time.perf_counter() - started
    peak = status_bytes(pid, "VmHWM")
    print(json.dumps({"seconds": seconds, "growth": peak - before, "rows": rows}))


def measure_library(library: str, path: Path, rows: int) -> dict[str, float]:
    """Seconds and peak RSS growth of one library's read, in a process of its own."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", library, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["rows"] == rows, result
    return {"seconds": result["seconds"], "growth": result["growth"]}


def main() -> None:
    """Generate the file, run every sample in a seeded order, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("LIBRARY", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        read_in_child(args.child[0], Path(args.child[1]))
        return

    extra = ("pyarrow", "pandas", "polars", "numpy", "python-multipart")
    header = environment({name: version(name) for name in extra})
    uploads = dict(zip(UPLOADS, (upload_raw, upload_multipart), strict=True))
    labels = [*UPLOADS, *LIBRARIES]
    results: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "numbers.csv"
        rows = write_csv(path, args.megabytes)
        size = path.stat().st_size
        for run, (label, sample) in enumerate(sample_order(labels, args.samples, args.seed)):
            if label in uploads:
                # A new database and artifact store each time, so no upload is a repeat.
                run_dir = Path(scratch) / f"run-{run}"
                run_dir.mkdir()
                measured = measure_upload(uploads[label], path, rows, run_dir)
            else:
                measured = measure_library(label, path, rows)
            results[label].append(measured)
            print(
                f"sample {sample} {label}: {measured['seconds']:.3f} s, "
                f"+{measured['growth'] / 1e6:.0f} MB",
                file=sys.stderr,
            )

    seconds = {label: Spread.of([r["seconds"] for r in results[label]]) for label in labels}
    growth = {label: Spread.of([r["growth"] / 1e6 for r in results[label]]) for label in labels}
    print("\n".join(header))
    print(
        f"{rows:,} rows x {FEATURES + 1} columns, {size / 1e6:.1f} MB; {args.samples} samples "
        f"per row, seed {args.seed}; median (min-max)\n"
    )
    print(
        "| measure | seconds | rows/s | speed vs pandas | vs pyarrow | vs polars "
        "| peak RSS growth, MB | growth / file | memory vs pandas |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label in labels:
        time_spread, memory = seconds[label], growth[label]
        speed = " | ".join(
            f"{seconds[library].median / time_spread.median:.2f}x" for library in LIBRARIES
        )
        name = label if label in uploads else f"{LIBRARIES[label]} {version(label)}"
        print(
            f"| {name} | {time_spread.format(2)} | {rows / time_spread.median:,.0f} | {speed} "
            f"| {memory.format(0)} | {memory.median * 1e6 / size:.2f}x "
            f"| {memory.median / growth['pandas'].median:.2f}x |"
        )


if __name__ == "__main__":
    main()
