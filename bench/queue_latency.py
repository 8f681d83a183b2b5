"""POST /runs -> running latency, side by side: local wake-up, LISTEN/NOTIFY, and polling alone.

Usage: .venv/bin/python bench/queue_latency.py [--runs 50] [--pg postgresql+psycopg://...]

Each configuration starts real fitserve processes on a fresh database, posts tiny runs one
at a time, and reads the server-side `started_at - created_at` of each. Prints a markdown
table with p50/p95/max and the ratio to the polling-only baseline.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import psycopg

BIN = Path(sys.executable).parent
SPEC = {
    "dataset": {"type": "synthetic_linear", "n_samples": 100},
    "epochs": 1,
    "batch_size": 10,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_postgres(url: str, name: str) -> str:
    admin = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + f"/{name}"


def start(commands: list[str], env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    subprocess.run(
        [str(BIN / "fitserve"), "db", "upgrade"], env=env, check=True, stderr=subprocess.DEVNULL
    )
    return [
        subprocess.Popen([str(BIN / "fitserve"), command], env=env, stderr=subprocess.DEVNULL)
        for command in commands
    ]


def measure(name: str, commands: list[str], database_url: str, runs: int, **extra: str) -> dict:
    port = free_port()
    env = {
        **os.environ,
        "FITSERVE_DATABASE_URL": database_url,
        "FITSERVE_PORT": str(port),
        "FITSERVE_DEVICES": "cpu",
        **extra,
    }
    processes = start(commands, env)
    latencies = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/workers").json():
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: service did not come up")
                time.sleep(0.2)
            for _ in range(runs + 3):
                run_id = client.post("/runs", json=SPEC).json()["id"]
                while (run := client.get(f"/runs/{run_id}").json())["status"] in (
                    "queued",
                    "running",
                ):
                    time.sleep(0.01)
                started = datetime.fromisoformat(run["started_at"])
                created = datetime.fromisoformat(run["created_at"])
                latencies.append((started - created).total_seconds() * 1000)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
    latencies = sorted(latencies[3:])  # the first runs warm up torch in the worker
    return {
        "name": name,
        "p50": statistics.median(latencies),
        "p95": latencies[int(len(latencies) * 0.95) - 1],
        "max": latencies[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            measure(
                "serve (SQLite): in-pool wake-up", ["serve"], f"sqlite:///{tmp}/a.db", args.runs
            ),
            measure(
                "api + worker (PostgreSQL): LISTEN/NOTIFY",
                ["api", "worker"],
                fresh_postgres(args.pg, "fitserve_bench"),
                args.runs,
            ),
            measure(
                "baseline: api + worker (SQLite), polling every 1 s",
                ["api", "worker"],
                f"sqlite:///{tmp}/b.db",
                args.runs,
                FITSERVE_POLL_SECONDS="1",
            ),
        ]
    baseline = results[-1]["p50"]
    print(f"POST /runs -> running, {args.runs} runs each, server-side timestamps\n")
    print("| configuration | p50 ms | p95 ms | max ms | p50 vs polling |")
    print("|---|---:|---:|---:|---:|")
    for row in results:
        print(
            f"| {row['name']} | {row['p50']:.1f} | {row['p95']:.1f} | {row['max']:.1f} "
            f"| {baseline / row['p50']:.0f}x faster |"
        )


if __name__ == "__main__":
    main()
