"""Runs per second one worker sustains on the README's d2l run, end to end, and where a run's
time goes.

Usage: .venv/bin/python bench/run_throughput.py [--runs 100] [--clients 4] [--samples 3]
                                                [--database-url postgresql+psycopg://...]

Throughput: each sample starts a real `fitserve serve` (FITSERVE_DEVICES=cpu: one worker) on a
fresh database (SQLite in a temporary folder, or with --database-url the bench's own PostgreSQL
database `fitserve_bench`, dropped and re-created) and a temporary artifacts folder, trains 3
warm-up runs, then --clients threads post --runs d2l runs between them as fast as they are
answered and wait for every one to succeed. From the server's timestamps: end to end is --runs
over (last finished_at - first created_at); the worker's rate is --runs over (last finished_at
- first started_at), the span in which it always had a queued run.

Breakdown: `fitserve api` serves the same database, --runs runs are queued, and then a worker
runs in this process with a wall-clock timer around each stage (claim, dataset load, training,
epoch writes and their checkpoints, weights, finish), so the table shows the milliseconds per
run of each. Stages nest (epoch writes happen inside training); the table says which.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any

import httpx
from common import D2L, Spread, environment, free_port
from queue_latency import fresh_postgres

BIN = Path(sys.executable).parent
WARM_UP = 3
TARGET_RUNS_PER_SECOND = 10.0


def service_env(database_url: str, artifacts: Path, port: int) -> dict[str, str]:
    """The environment of every fitserve process of one sample."""
    return {
        **os.environ,
        "FITSERVE_DATABASE_URL": database_url,
        "FITSERVE_ARTIFACTS": str(artifacts),
        "FITSERVE_PORT": str(port),
        "FITSERVE_DEVICES": "cpu",
        "FITSERVE_LOG_LEVEL": "WARNING",
    }


@contextmanager
def fitserve(command: str, env: dict[str, str]) -> Iterator[httpx.Client]:
    """A migrated database and a `fitserve <command>` process; a client of its API."""
    subprocess.run(
        [str(BIN / "fitserve"), "db", "upgrade"], env=env, check=True, stderr=subprocess.DEVNULL
    )
    process = subprocess.Popen([str(BIN / "fitserve"), command], env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{env['FITSERVE_PORT']}", timeout=60) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fitserve {command} did not come up")
                time.sleep(0.05)
            yield c
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def post_all(client: httpx.Client, runs: int, clients: int) -> list[int]:
    """Post `runs` d2l runs from `clients` threads; their ids."""

    def post(_index: int) -> int:
        response = client.post("/runs", json=D2L)
        response.raise_for_status()
        return int(response.json()["id"])

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, range(runs)))


def wait_all(client: httpx.Client, run_ids: list[int], timeout: float) -> list[dict[str, Any]]:
    """Every run, once each has ended; raises unless all succeeded."""
    deadline = time.monotonic() + timeout
    done = []
    for run_id in run_ids:
        while (run := client.get(f"/runs/{run_id}").json())["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} was not done in {timeout:g} s")
            time.sleep(0.05)
        if run["status"] != "succeeded":
            raise RuntimeError(f"run {run_id} ended {run['status']}: {run.get('error')}")
        done.append(run)
    return done


def throughput(database_url: str, artifacts: Path, runs: int, clients: int) -> dict[str, float]:
    """One `fitserve serve` sample: end-to-end and worker runs/s, and per-run timings."""
    with fitserve("serve", service_env(database_url, artifacts, free_port())) as client:
        wait_for_worker(client)
        wait_all(client, post_all(client, WARM_UP, 1), 60)
        done = wait_all(client, post_all(client, runs, clients), 600)
        epochs = [client.get(f"/runs/{run['id']}/epochs").json() for run in done[:10]]

    def at(run: dict[str, Any], key: str) -> datetime:
        return datetime.fromisoformat(run[key])

    created = min(at(run, "created_at") for run in done)
    started = min(at(run, "started_at") for run in done)
    finished = max(at(run, "finished_at") for run in done)
    spans = [(at(run, "finished_at") - at(run, "started_at")).total_seconds() for run in done]
    return {
        "end to end runs/s": runs / (finished - created).total_seconds(),
        "worker runs/s": runs / (finished - started).total_seconds(),
        "claim -> finished, ms": 1000 * sum(spans) / len(spans),
        "epochs' training, ms": 1000
        * sum(sum(row["seconds"] for row in rows) for rows in epochs)
        / len(epochs),
    }


def wait_for_worker(client: httpx.Client) -> None:
    """Wait until a worker has registered."""
    deadline = time.monotonic() + 60
    while not client.get("/workers").json():
        if time.monotonic() > deadline:
            raise RuntimeError("no worker registered in 60 s")
        time.sleep(0.05)


class Timers:
    """Wall-clock totals of wrapped callables, by stage name (thread-safe enough: one worker)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._restore: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        """Time every call of `owner.name` as `stage`."""
        original = getattr(owner, name)

        @wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started
                self.calls[stage] += 1

        setattr(owner, name, timed)
        self._restore.append(lambda: setattr(owner, name, original))

    def unwrap(self) -> None:
        """Put every wrapped callable back."""
        for restore in reversed(self._restore):
            restore()


# (stage, where it nests, how it is found): the owner's module, the owner, the attribute.
STAGES: tuple[tuple[str, str, str, str, str], ...] = (
    ("worker loop: maintain queue", "", "app.worker.local", "Worker", "_maintain_queue"),
    ("worker loop: advance sweeps", "", "app.sweeps.flows", "", "advance_sweeps"),
    ("worker loop: claim", "", "app.worker.local", "Worker", "_claim"),
    ("attempt (all below)", "", "app.worker.attempt", "RunExecution", "run"),
    ("dataset load", "attempt", "app.worker.attempt", "", "load_table"),
    ("checkpoint load", "attempt", "app.runs.records", "", "load_checkpoint"),
    ("trainer set-up", "attempt", "app.training.engine", "Trainer", "__init__"),
    ("training (with epoch writes)", "attempt", "app.training.engine", "Trainer", "run"),
    ("epoch writes", "training", "app.worker.attempt", "RunExecution", "epoch_finished"),
    ("checkpoint serialise", "epoch writes", "app.training.engine", "Trainer", "checkpoint"),
    ("artifact record + publish", "epoch writes, finish", "app.artifacts.service", "", "record"),
    ("finish (weights, final tx)", "attempt", "app.worker.attempt", "RunExecution", "_conclude"),
    ("weights export", "finish", "app.worker.attempt", "", "export_weights"),
)


def breakdown(database_url: str, artifacts: Path, runs: int) -> dict[str, float]:
    """Milliseconds per run of each stage, from a worker in this process; plus its runs/s."""
    import importlib

    from app.config import Settings
    from app.worker.attempt import WorkerSettings
    from app.worker.local import Worker

    env = service_env(database_url, artifacts, free_port())
    with fitserve("api", env) as client:
        run_ids = post_all(client, WARM_UP + runs, 4)
        os.environ.update(
            {key: env[key] for key in ("FITSERVE_DATABASE_URL", "FITSERVE_ARTIFACTS")}
        )
        settings = Settings()
        worker = Worker(WorkerSettings.from_settings(settings, worker_id="bench", device="cpu"))
        thread = threading.Thread(target=worker.run)
        timers = Timers()
        thread.start()
        # The warm-up runs train before the timers go in.
        wait_all(client, run_ids[:WARM_UP], 120)
        for _stage, _nest, module, owner, name in STAGES:
            target = importlib.import_module(module)
            timers.wrap(getattr(target, owner) if owner else target, name, _stage)
        started = time.perf_counter()
        wait_all(client, run_ids[WARM_UP:], 600)
        elapsed = time.perf_counter() - started
        timers.unwrap()
        worker.request_stop()
        thread.join(60)
    result = {stage: 1000 * timers.seconds[stage] / runs for stage, *_ in STAGES}
    result["wall per run"] = 1000 * elapsed / runs
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="measured runs per sample")
    parser.add_argument("--clients", type=int, default=4, help="threads posting the runs")
    parser.add_argument("--samples", type=int, default=3, help="throughput samples")
    parser.add_argument(
        "--database-url", help="a PostgreSQL server to bench on instead of SQLite (its own db)"
    )
    args = parser.parse_args()
    import app

    print(f"d2l runs per second, one worker, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    for line in environment():
        print(f"  {line}")
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"  {args.samples} samples x {args.runs} runs (+{WARM_UP} warm-up) on {backend}, "
        f"{args.clients} posting clients, app from {Path(app.__file__).parent}\n"
    )
    results: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:

        def database(name: str) -> str:
            if args.database_url:
                return fresh_postgres(args.database_url)
            return f"sqlite:///{tmp}/{name}.db"

        for number in range(1, args.samples + 1):
            sample = throughput(
                database(str(number)), Path(tmp) / f"art-{number}", args.runs, args.clients
            )
            for key, value in sample.items():
                results[key].append(value)
            print(
                f"[{number}/{args.samples}] "
                + ", ".join(f"{key} {value:.1f}" for key, value in sample.items()),
                flush=True,
            )
        stages = breakdown(database("breakdown"), Path(tmp) / "art-breakdown", args.runs)

    print()
    print("| " + " | ".join(f"{key}, median (min-max)" for key in results) + " |")
    print("|" + "---:|" * len(results))
    print("| " + " | ".join(Spread.of(values).format() for values in results.values()) + " |")
    worker_rate = Spread.of(results["worker runs/s"]).median
    verdict = "met" if worker_rate >= TARGET_RUNS_PER_SECOND else "missed"
    print(f"\ntarget >= {TARGET_RUNS_PER_SECOND:g} worker runs/s (median): {verdict}\n")
    print(f"Per run, one in-process worker with stage timers ({args.runs} queued runs):\n")
    print("| stage | inside | ms per run |")
    print("|---|---|---:|")
    for stage, nest, *_ in STAGES:
        print(f"| {stage} | {nest} | {stages[stage]:.2f} |")
    print(f"| wall time per run | | {stages['wall per run']:.2f} |")


if __name__ == "__main__":
    main()
