"""POST /runs -> running latency, side by side: local wake-up, LISTEN/NOTIFY, and polling alone.

Usage: .venv/bin/python bench/queue_latency.py [--runs 50] [--samples 3] [--window 1]
                                               [--seed 1] [--pg postgresql+psycopg://...]

Three configurations: `fitserve serve` on SQLite (the pool wakes its worker in-process),
`fitserve api` + `fitserve worker` on PostgreSQL (LISTEN/NOTIFY), and `api` + `worker` on SQLite
polling every 1 s (the baseline). Each sample starts real fitserve processes on a fresh
database: SQLite in a temporary folder, or the bench's own PostgreSQL database `fitserve_bench`
(dropped and re-created beside the one --pg names, which is left alone). It posts 3 warm-up
runs, then --runs tiny runs, and reads the server-side `started_at - created_at` of each.

Arrivals are independent of the poll phase: before each post the client sleeps a seeded uniform
offset in [0, --window), counted from the end of the previous run. An idle worker polls again
poll_seconds after its last run, so a closed loop (post as soon as the previous run is done)
always lands at the start of a poll interval and waits a whole one; a uniform offset over a
whole number of intervals lands at a uniform phase. Runs do not overlap, so none queues behind
another's training.

Each configuration gets --samples samples (3 or more), interleaved in a seeded random order.
The table shows, per configuration, the median over samples of each sample's p50 and p95
(statistics.quantiles, inclusive method) with their min-max, the max over all runs, and the
baseline's median divided by the configuration's.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import httpx
import psycopg
from common import Spread, environment, free_port, percentile, sample_order
from psycopg import sql

BIN = Path(sys.executable).parent
SPEC = {
    "dataset": {"type": "synthetic_linear", "n_samples": 100},
    "epochs": 1,
    "batch_size": 10,
}
WARM_UP = 3  # the first runs of each sample warm up torch in the worker
POLL_SECONDS = 1.0  # the baseline's FITSERVE_POLL_SECONDS
BENCH_DATABASE = "fitserve_bench"


@dataclass(frozen=True)
class Configuration:
    """One way of running fitserve: its processes, its database and extra settings."""

    name: str
    commands: tuple[str, ...]
    postgres: bool
    env: dict[str, str] = field(default_factory=dict)


CONFIGURATIONS = (
    Configuration("serve (SQLite): in-pool wake-up", ("serve",), postgres=False),
    Configuration("api + worker (PostgreSQL): LISTEN/NOTIFY", ("api", "worker"), postgres=True),
    Configuration(
        "baseline: api + worker (SQLite), polling every 1 s",
        ("api", "worker"),
        postgres=False,
        env={"FITSERVE_POLL_SECONDS": f"{POLL_SECONDS:g}"},
    ),
)
BASELINE = CONFIGURATIONS[-1].name


def fresh_postgres(url: str, name: str = BENCH_DATABASE) -> str:
    """Drop and re-create the bench's own database `name` on --pg's server; its URL."""
    base, _, database = url.rpartition("/")
    if database.split("?", 1)[0] == name:
        # The admin connection goes to --pg's database, and that one is never dropped.
        raise SystemExit(f"--pg must name another database than {name}, which the bench drops")
    admin = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        # Its own database, never a schema of --pg's: the test suite rebuilds `public` there.
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{base}/{name}"


def postgres_version(url: str) -> str:
    """The PostgreSQL server's version string, for the header."""
    admin = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return row[0].split()[0] if row else "unknown"


def start(commands: tuple[str, ...], env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """Migrate the database, then start one fitserve process per command."""
    subprocess.run(
        [str(BIN / "fitserve"), "db", "upgrade"], env=env, check=True, stderr=subprocess.DEVNULL
    )
    return [
        subprocess.Popen([str(BIN / "fitserve"), command], env=env, stderr=subprocess.DEVNULL)
        for command in commands
    ]


def measure(
    config: Configuration, database_url: str, runs: int, window: float, rng: random.Random
) -> list[float]:
    """One sample: fresh processes, warm-up, then `runs` server-side latencies in ms."""
    port = free_port()
    env = {
        **os.environ,
        "FITSERVE_DATABASE_URL": database_url,
        "FITSERVE_PORT": str(port),
        "FITSERVE_DEVICES": "cpu",
        **config.env,
    }
    processes = start(config.commands, env)
    latencies = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for_workers(client, config.name)
            for index in range(WARM_UP + runs):
                # The offset decouples the arrival from the poll cycle, which restarts when
                # the previous run ends (see the module docstring).
                time.sleep(rng.uniform(0, window))
                response = client.post("/runs", json=SPEC)
                response.raise_for_status()
                run_id = response.json()["id"]
                # Wait for the end, not the start: the next run must not queue behind this one.
                while (run := client.get(f"/runs/{run_id}").json())["status"] in (
                    "queued",
                    "running",
                ):
                    time.sleep(0.01)
                if run["status"] != "succeeded":
                    raise RuntimeError(f"{config.name}: run {run_id} ended {run['status']}")
                if index < WARM_UP:
                    continue
                started = datetime.fromisoformat(run["started_at"])
                created = datetime.fromisoformat(run["created_at"])
                latencies.append((started - created).total_seconds() * 1000)
    finally:
        stop(processes)
    return latencies


def wait_for_workers(client: httpx.Client, name: str) -> None:
    """Wait until the service answers and a worker has registered."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/workers").json():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: service did not come up")
        time.sleep(0.2)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process, then wait for each to exit."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="measured runs per sample")
    parser.add_argument("--samples", type=int, default=3, help="samples per configuration")
    parser.add_argument(
        "--window",
        type=float,
        default=POLL_SECONDS,
        help="each post waits a uniform offset in [0, WINDOW) seconds; a multiple of 1 s",
    )
    parser.add_argument("--seed", type=int, default=1, help="seeds the order and the offsets")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if args.samples < 3:
        parser.error("--samples must be at least 3")
    if args.runs < 2:
        parser.error("--runs must be at least 2 for percentiles")
    intervals = args.window / POLL_SECONDS
    # Only a whole number of poll intervals gives every phase of the cycle the same chance.
    if intervals < 1 or abs(intervals - round(intervals)) > 1e-9:
        parser.error(f"--window must be a whole multiple of the poll interval ({POLL_SECONDS:g} s)")

    order = sample_order([config.name for config in CONFIGURATIONS], args.samples, args.seed)
    print(f"POST /runs -> running, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    for line in environment({"postgresql server": postgres_version(args.pg)}):
        print(f"  {line}")
    print(
        f"  {args.samples} samples x {args.runs} runs (+{WARM_UP} warm-up) per configuration, "
        f"arrivals at uniform offsets in [0, {args.window:g}) s after the previous run, "
        f"seed {args.seed}; order:"
    )
    for position, (name, sample) in enumerate(order, 1):
        print(f"    {position}. {name} #{sample}")
    print()

    def sample(config: Configuration, database_url: str, number: int) -> list[float]:
        # One stream per sample, so a sample's offsets do not depend on the order.
        rng = random.Random(f"{args.seed}/{config.name}/{number}")
        return measure(config, database_url, args.runs, args.window, rng)

    samples = run_samples(
        order, {config.name: config for config in CONFIGURATIONS}, args.pg, sample
    )
    print_table(samples)


Config = TypeVar("Config", bound="HasDatabase")


class HasDatabase(Protocol):
    """A configuration that names whether it runs on PostgreSQL."""

    name: str
    postgres: bool


def run_samples(
    order: list[tuple[str, int]],
    configs: dict[str, Config],
    pg: str,
    sample: Callable[[Config, str, int], list[float]],
) -> dict[str, list[list[float]]]:
    """Each sample in `order` on a fresh database, its p50 and p95 printed as it ends."""
    samples: dict[str, list[list[float]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for position, (name, number) in enumerate(order, 1):
            config = configs[name]
            if config.postgres:
                database_url = fresh_postgres(pg)
            else:
                database_url = f"sqlite:///{tmp}/{position}.db"
            latencies = sample(config, database_url, number)
            samples[name].append(latencies)
            print(
                f"[{position}/{len(order)}] {name} #{number}: "
                f"p50 {percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms",
                flush=True,
            )
    return samples


def print_table(samples: dict[str, list[list[float]]]) -> None:
    """Per configuration: median (min-max) over samples of p50 and p95, max, ratios."""
    p50 = {name: Spread.of([percentile(s, 50) for s in runs]) for name, runs in samples.items()}
    p95 = {name: Spread.of([percentile(s, 95) for s in runs]) for name, runs in samples.items()}
    print()
    print(
        "| configuration | p50 ms, median (min-max) | p95 ms, median (min-max) | max ms "
        "| p50: polling / this | p95: polling / this |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in samples.items():
        worst = max(max(s) for s in runs)
        print(
            f"| {name} | {p50[name].format()} | {p95[name].format()} | {worst:.1f} "
            f"| {p50[BASELINE].median / p50[name].median:.1f}x "
            f"| {p95[BASELINE].median / p95[name].median:.1f}x |"
        )


if __name__ == "__main__":
    main()
