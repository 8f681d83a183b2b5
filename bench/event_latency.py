"""Epoch commit -> event received: the live stream, side by side with polling the epochs.

Usage: .venv/bin/python bench/event_latency.py [--epochs 100] [--samples 3] [--seed 1]
                                               [--pg postgresql+psycopg://...]

Each sample starts `fitserve api` + `fitserve worker` on a fresh database (SQLite in a temporary
folder, or the bench's own PostgreSQL database `fitserve_bench`, see queue_latency.py) and
posts one run of --epochs tiny epochs, each lingering 50 ms after it commits (the workers' test
hook), so epochs commit one at a time. A client then follows the run:

- `events`: `GET /runs/{id}/events`, as the dashboard, the client and `fitserve runs create
  --follow` do (LISTEN/NOTIFY on PostgreSQL, a 100 ms poll of the newest event id on SQLite);
- baseline: `GET /runs/{id}/epochs` every 1 s, the only way to watch a run before events.

Latency is the time an epoch is first seen minus its row's `created_at` (set at the INSERT,
just before the commit), read from the database after the run; both clocks are this machine's.
The table shows, per configuration, the median over samples of each sample's p50 and p95
(min-max), and the baseline's median divided by the configuration's.
"""

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import sqlalchemy
from common import Spread, environment, free_port, percentile, sample_order
from httpx_sse import connect_sse
from queue_latency import (
    postgres_version,
    run_samples,
    start,
    stop,
    wait_for_workers,
)

EPOCH_SLEEP_SECONDS = 0.05
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Configuration:
    """A database and a way of following the run."""

    name: str
    postgres: bool
    follow: Callable[[httpx.Client, int], dict[int, float]]


def follow_events(client: httpx.Client, run_id: int) -> dict[int, float]:
    """Epoch -> wall-clock time its event arrived, until the stream ends."""
    seen: dict[int, float] = {}
    with connect_sse(client, "GET", f"/runs/{run_id}/events", timeout=120) as source:
        for message in source.iter_sse():
            if message.event == "epoch":
                seen.setdefault(json.loads(message.data)["epoch"], time.time())
    return seen


def follow_polling(client: httpx.Client, run_id: int) -> dict[int, float]:
    """Epoch -> wall-clock time a poll of the epochs first showed it, until the run ends."""
    seen: dict[int, float] = {}
    while True:
        status = client.get(f"/runs/{run_id}").json()["status"]
        now = time.time()
        for epoch in client.get(f"/runs/{run_id}/epochs").json():
            seen.setdefault(epoch["epoch"], now)
        if status in ("succeeded", "failed", "cancelled"):
            return seen
        time.sleep(POLL_SECONDS)


CONFIGURATIONS = (
    Configuration("events (PostgreSQL, LISTEN/NOTIFY)", postgres=True, follow=follow_events),
    Configuration("events (SQLite, 100 ms poll)", postgres=False, follow=follow_events),
    Configuration(
        "baseline: poll GET /runs/{id}/epochs every 1 s (PostgreSQL)",
        postgres=True,
        follow=follow_polling,
    ),
)
BASELINE = CONFIGURATIONS[-1].name


def measure(config: Configuration, database_url: str, epochs: int) -> list[float]:
    """One sample: fresh processes, one run of `epochs` epochs, latency per epoch in ms."""
    port = free_port()
    env = {
        **os.environ,
        "FITSERVE_DATABASE_URL": database_url,
        "FITSERVE_PORT": str(port),
        "FITSERVE_DEVICES": "cpu",
        # A fresh database's first run has id 1.
        "FITSERVE_TEST_FAULTS": json.dumps({"1": {"epoch_sleep_seconds": EPOCH_SLEEP_SECONDS}}),
    }
    processes = start(("api", "worker"), env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for_workers(client, config.name)
            spec = {
                "dataset": {"type": "synthetic_linear", "n_samples": 100},
                "epochs": epochs,
                "batch_size": 10,
            }
            response = client.post("/runs", json=spec)
            response.raise_for_status()
            run_id = response.json()["id"]
            seen = config.follow(client, run_id)
    finally:
        stop(processes)
    engine = sqlalchemy.create_engine(database_url)
    with engine.connect() as connection:
        committed = dict(
            connection.execute(
                sqlalchemy.text("SELECT epoch, created_at FROM epochs WHERE run_id = :id"),
                {"id": run_id},
            ).all()
        )
    engine.dispose()
    if len(seen) != epochs or len(committed) != epochs:
        raise RuntimeError(f"{config.name}: saw {len(seen)} of {epochs} epochs")
    return [(seen[epoch] - as_utc(committed[epoch]).timestamp()) * 1000 for epoch in committed]


def as_utc(value: datetime | str) -> datetime:
    """A stored timestamp as an aware UTC datetime (SQLite returns text, without a zone)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs (samples) per run")
    parser.add_argument("--samples", type=int, default=3, help="runs per configuration")
    parser.add_argument("--seed", type=int, default=1, help="seeds the order of the samples")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if args.samples < 3 or args.epochs < 2:
        parser.error("--samples must be at least 3 and --epochs at least 2")

    order = sample_order([config.name for config in CONFIGURATIONS], args.samples, args.seed)
    print(f"epoch commit -> event received, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    for line in environment({"postgresql server": postgres_version(args.pg)}):
        print(f"  {line}")
    print(
        f"  {args.samples} samples x {args.epochs} epochs per configuration, each epoch "
        f"lingering {EPOCH_SLEEP_SECONDS * 1000:.0f} ms; seed {args.seed}"
    )
    samples = run_samples(
        order,
        {config.name: config for config in CONFIGURATIONS},
        args.pg,
        lambda config, database_url, _number: measure(config, database_url, args.epochs),
    )
    p50 = {name: Spread.of([percentile(s, 50) for s in runs]) for name, runs in samples.items()}
    p95 = {name: Spread.of([percentile(s, 95) for s in runs]) for name, runs in samples.items()}
    print()
    print(
        "| configuration | p50 ms, median (min-max) | p95 ms, median (min-max) "
        "| p50: baseline / this |"
    )
    print("|---|---:|---:|---:|")
    for name in samples:
        print(
            f"| {name} | {p50[name].format()} | {p95[name].format()} "
            f"| {p50[BASELINE].median / p50[name].median:.1f}x |"
        )


if __name__ == "__main__":
    main()
