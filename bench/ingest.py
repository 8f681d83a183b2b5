"""Ingest a ~100 MB numeric CSV through the API and compare with pandas.read_csv on the same file.

Run from the repository root: `.venv/bin/python bench/ingest.py [--megabytes 100]`.
pandas is not a dependency of fitserve: `.venv/bin/pip install pandas` first.
Prints a markdown table: rows/s of the upload (end to end, over HTTP, stored in SQLite) and of
pandas.read_csv, and the API process's peak RSS (VmHWM) against the file size.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

FEATURES = 10
BIN = Path(sys.executable).parent


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_pid(pid: int) -> int:
    """`fitserve api` runs uvicorn in a spawned child process; that child is the API."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in children.read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
        time.sleep(0.1)
    raise RuntimeError("the API process did not start")


def peak_rss(pid: int) -> int:
    """VmHWM of a process in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def chunks(path: Path) -> Iterator[bytes]:
    """The file in 1 MiB pieces, so httpx sends it chunked with no Content-Length."""
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            yield chunk


def upload_raw(client: httpx.Client, path: Path, rows: int) -> float:
    """Seconds to POST the file as the body (options in the query)."""
    started = time.perf_counter()
    response = client.post(
        "/datasets",
        params={"target": "y"},
        content=chunks(path),
        headers={"content-type": "text/csv"},
    )
    seconds = time.perf_counter() - started
    response.raise_for_status()
    assert response.json()["n_rows"] == rows, response.text
    return seconds


def upload_multipart(client: httpx.Client, path: Path, rows: int) -> float:
    """Seconds to POST the file as multipart/form-data (as `curl -F` does), other options."""
    with path.open("rb") as stream:
        started = time.perf_counter()
        response = client.post(
            "/datasets",
            files={"file": ("numbers.csv", stream, "text/csv")},
            data={"target": "y", "missing": "drop"},
        )
        seconds = time.perf_counter() - started
    response.raise_for_status()
    assert response.json()["n_rows"] == rows, response.text
    return seconds


def main() -> None:
    """Generate the file, upload it, time pandas, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    import pandas

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "numbers.csv"
        rows = write_csv(path, args.megabytes)
        size = path.stat().st_size
        port = free_port()
        env = {
            **os.environ,
            "FITSERVE_DATABASE_URL": f"sqlite:///{scratch}/bench.db",
            "FITSERVE_PORT": str(port),
        }
        subprocess.run(
            [BIN / "fitserve", "db", "upgrade"], env=env, check=True, capture_output=True
        )
        server = subprocess.Popen([BIN / "fitserve", "api"], env=env, stderr=subprocess.DEVNULL)
        try:
            api_pid = child_pid(server.pid)
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, timeout=600) as client:
                while True:
                    try:
                        client.get("/healthz")
                        break
                    except httpx.TransportError:
                        time.sleep(0.2)
                idle_rss = peak_rss(api_pid)
                upload_seconds = upload_raw(client, path, rows)
                upload_rss = peak_rss(api_pid)
                multipart_seconds = upload_multipart(client, path, rows)
        finally:
            server.terminate()
            server.wait(30)
        started = time.perf_counter()
        frame = pandas.read_csv(path)
        pandas_seconds = time.perf_counter() - started
        assert len(frame) == rows

    mb = size / 1e6
    print(f"{rows} rows, {FEATURES + 1} columns, {mb:.1f} MB\n")
    print("| measure | seconds | rows/s | vs pandas.read_csv |")
    print("|---|---|---|---|")
    for label, seconds in [
        ("fitserve upload, file as body (HTTP, parse, checks, stats, store)", upload_seconds),
        ("fitserve upload, multipart (as curl -F)", multipart_seconds),
        ("pandas.read_csv (parse only, same file)", pandas_seconds),
    ]:
        print(
            f"| {label} | {seconds:.2f} | {rows / seconds:,.0f} | "
            f"{pandas_seconds / seconds:.2f}x the speed |"
        )
    print()
    print("| API peak RSS (VmHWM) | |")
    print("|---|---|")
    print(f"| idle, before the upload | {idle_rss / 1e6:.0f} MB |")
    print(
        f"| after the body upload | {upload_rss / 1e6:.0f} MB = {upload_rss / size:.2f}x the file "
        f"(growth {(upload_rss - idle_rss) / size:.2f}x) |"
    )


if __name__ == "__main__":
    main()
