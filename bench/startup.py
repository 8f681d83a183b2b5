"""`fitserve serve` start-up: from `/healthz` first answering to a run posted then being claimed.

Usage: .venv/bin/python bench/startup.py [--samples 5] [--database-url postgresql+psycopg://...]

Each sample starts a real `fitserve serve` (FITSERVE_DEVICES=cpu: one worker) on a fresh
database (SQLite in a temporary folder unless --database-url names a PostgreSQL server, whose
bench database `fitserve_bench` is dropped and re-created) and a temporary artifacts folder. The
client polls `/healthz` every 5 ms; the moment it first answers 200 it posts the README's d2l run
and polls the run until it has a `started_at` (the worker claimed it).

The table shows the median (min-max) over samples of: process start -> `/healthz` 200, `/healthz`
200 -> claimed (the target: at most 3 s), and `/healthz` 200 -> succeeded; and the worker's own
start to its registration (its row's `started_at`) from process start.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from common import D2L, Spread, environment, free_port
from queue_latency import fresh_postgres

BIN = Path(sys.executable).parent
TARGET_SECONDS = 3.0
COLUMNS = (
    "start -> /healthz",
    "/healthz -> claimed",
    "/healthz -> succeeded",
    "start -> worker up",
)


def sample(database_url: str, artifacts: Path) -> dict[str, float]:
    """One fresh `fitserve serve`: the seconds of each column."""
    port = free_port()
    env = {
        **os.environ,
        "FITSERVE_DATABASE_URL": database_url,
        "FITSERVE_ARTIFACTS": str(artifacts),
        "FITSERVE_PORT": str(port),
        "FITSERVE_DEVICES": "cpu",
    }
    subprocess.run(
        [str(BIN / "fitserve"), "db", "upgrade"], env=env, check=True, stderr=subprocess.DEVNULL
    )
    started = time.monotonic()
    started_wall = datetime.now(UTC)
    serve = subprocess.Popen([str(BIN / "fitserve"), "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            healthy = wait_for_health(client)
            healthy_wall = datetime.now(UTC)
            run_id = client.post("/runs", json=D2L).raise_for_status().json()["id"]
            claimed = None
            deadline = time.monotonic() + 60
            while (run := client.get(f"/runs/{run_id}").json())["status"] not in (
                "succeeded",
                "failed",
            ):
                if claimed is None and run["started_at"]:
                    claimed = datetime.fromisoformat(run["started_at"])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {run_id} was not done in 60 s")
                time.sleep(0.005)
            if run["status"] != "succeeded":
                raise RuntimeError(f"run {run_id} ended {run['status']}: {run.get('error')}")
            claimed = datetime.fromisoformat(run["started_at"])
            finished = datetime.fromisoformat(run["finished_at"])
            [worker] = client.get("/workers").json()
            registered = datetime.fromisoformat(worker["started_at"])
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    return dict(
        zip(
            COLUMNS,
            (
                healthy - started,
                (claimed - healthy_wall).total_seconds(),
                (finished - healthy_wall).total_seconds(),
                (registered - started_wall).total_seconds(),
            ),
            strict=True,
        )
    )


def wait_for_health(client: httpx.Client) -> float:
    """Poll `/healthz` until it answers 200; the monotonic time it first did."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz", timeout=1).status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            pass
        time.sleep(0.005)
    raise RuntimeError("/healthz did not answer in 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument(
        "--database-url", help="a PostgreSQL server to bench on instead of SQLite (its own db)"
    )
    args = parser.parse_args()
    print(f"fitserve serve start-up, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    for line in environment():
        print(f"  {line}")
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(f"  {args.samples} samples on {backend}, FITSERVE_DEVICES=cpu (one worker)\n")
    results: dict[str, list[float]] = {column: [] for column in COLUMNS}
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(1, args.samples + 1):
            database_url = (
                fresh_postgres(args.database_url)
                if args.database_url
                else f"sqlite:///{tmp}/{number}.db"
            )
            seconds = sample(database_url, Path(tmp) / f"artifacts-{number}")
            for column, value in seconds.items():
                results[column].append(value)
            print(
                f"[{number}/{args.samples}] "
                + ", ".join(f"{column} {value:.2f} s" for column, value in seconds.items()),
                flush=True,
            )
    claimed = Spread.of(results[COLUMNS[1]])
    print()
    print("| " + " | ".join(f"{column}, s" for column in COLUMNS) + " |")
    print("|" + "---:|" * len(COLUMNS))
    print("| " + " | ".join(Spread.of(results[c]).format(2) for c in COLUMNS) + " |")
    verdict = "met" if claimed.median <= TARGET_SECONDS else "missed"
    print(f"\ntarget /healthz -> claimed <= {TARGET_SECONDS:g} s (median): {verdict}")


if __name__ == "__main__":
    main()
