"""Predict benchmark, side by side in one run: fitserve vs a bare FastAPI endpoint vs MLflow.

Usage: .venv/bin/python bench/predict.py [--duration 10] [--connections 16] [--no-mlflow]

Trains one 20 -> 64 -> 1 MLP through fitserve (SQLite in a temporary folder), registers it
as `bench@production`, then serves the same weights three ways, each a single uvicorn
process pinned to CPU 0, and loads each with wrk (2 threads, pinned to CPU 1) for a fixed
time: fitserve by run id and by name@alias, bench/bare_server.py, and `mlflow models serve`
from bench/.mlflow-venv. Prints one markdown table and writes it under bench/results/.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import torch
from safetensors.torch import load as load_tensors

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MLFLOW_PYTHON = ROOT / "bench" / ".mlflow-venv" / "bin" / "python"
FEATURES = 20
ROW = [round(0.1 * i - 1.0, 2) for i in range(FEATURES)]
BATCH_ROWS = 1000
SPEC = {
    "dataset": {
        "type": "synthetic_linear",
        "n_samples": 2000,
        "true_w": [round(0.1 * (i % 7) - 0.3, 2) for i in range(FEATURES)],
        "true_b": 1.0,
    },
    "model": {"type": "mlp", "hidden": [64]},
    "optimizer": {"type": "adam", "lr": 0.01},
    "epochs": 3,
    "batch_size": 64,
    "seed": 1,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpu: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command] if shutil.which("taskset") else command


@contextmanager
def process(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_ready(
    url: str, body: dict, proc: subprocess.Popen, log: Path, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}; see {log}")
        try:
            if httpx.post(url, json=body, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s; see {log}")


def fitserve_env(database_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "FITSERVE_DATABASE_URL": database_url,
        "FITSERVE_PORT": str(port),
        "FITSERVE_DEVICES": "cpu",
    }


def train(database_url: str, work: Path) -> tuple[int, bytes]:
    """Train and register the MLP with `fitserve serve`; its run id and weights file."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    subprocess.run(
        [BIN / "fitserve", "db", "upgrade"], env=fitserve_env(database_url, port), check=True
    )
    with process(
        [str(BIN / "fitserve"), "serve"], work / "train.log", fitserve_env(database_url, port)
    ):
        deadline = time.monotonic() + 60
        while True:
            try:
                run = httpx.post(f"{base}/runs", json=SPEC).json()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        while run["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.3)
            run = httpx.get(f"{base}/runs/{run['id']}").json()
        if run["status"] != "succeeded":
            raise RuntimeError(f"training failed: {run}")
        httpx.post(f"{base}/models", json={"name": "bench", "run_id": run["id"]}).raise_for_status()
        httpx.put(f"{base}/models/bench/aliases/production", json={"version": 1}).raise_for_status()
        weights = httpx.get(f"{base}/runs/{run['id']}/weights", params={"format": "safetensors"})
        weights.raise_for_status()
        return run["id"], weights.content


def ensure_wrk() -> str:
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, stdout=subprocess.DEVNULL)
    return "wrk"


def to_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def load(url: str, body: dict, *, duration: int, connections: int, work: Path) -> dict:
    """wrk against one endpoint: requests/s, p50 and p99 in ms, non-2xx answers."""
    script = work / f"post-{abs(hash(url))}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{json.dumps(body)}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    command = pinned("1", ["wrk", "-t2", f"-c{connections}", "--latency", "-s", str(script)])
    subprocess.run([*command, "-d2s", url], check=True, capture_output=True)  # warm-up
    out = subprocess.run(
        [*command, f"-d{duration}s", url], check=True, capture_output=True, text=True
    ).stdout
    percentiles = {
        int(p): to_ms(v, u)
        for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url} answered {errors[1]} requests with an error status")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50": percentiles[50],
        "p99": percentiles[99],
    }


def batch_p50(url: str, body: dict, *, repeats: int = 30) -> float:
    """Median latency in ms of a 1,000-row request, one at a time from this process."""
    with httpx.Client(timeout=60) as client:
        client.post(url, json=body).raise_for_status()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            client.post(url, json=body).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def first_prediction(url: str, body: dict) -> float:
    answer = httpx.post(url, json=body).json()
    value = answer["predictions"][0]
    return float(value[0] if isinstance(value, list) else value)


def prepare_mlflow(weights: bytes, work: Path) -> Path:
    state = work / "state.pt"
    torch.save(load_tensors(weights), state)
    model_dir = work / "mlflow-model"
    subprocess.run(
        [str(MLFLOW_PYTHON), str(ROOT / "bench" / "mlflow_model.py"), str(state), str(model_dir)],
        check=True,
        capture_output=True,
    )
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    ensure_wrk()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="fitserve-bench-"))
    database_url = f"sqlite:///{work / 'bench.db'}"
    run_id, weights = train(database_url, work)
    (work / "weights.safetensors").write_bytes(weights)

    ports = {name: free_port() for name in ("fitserve", "bare", "mlflow")}
    fitserve = f"http://127.0.0.1:{ports['fitserve']}"
    bare = f"http://127.0.0.1:{ports['bare']}/predict"
    mlflow = f"http://127.0.0.1:{ports['mlflow']}/invocations"
    one = {"inputs": [ROW]}
    batch = {"inputs": [ROW] * BATCH_ROWS}
    targets = [
        ("fitserve `POST /predict` by run id", f"{fitserve}/predict", {"run_id": run_id}),
        (
            "fitserve `POST /predict` by `bench@production`",
            f"{fitserve}/predict",
            {"model": "bench@production"},
        ),
        ("bare FastAPI + uvicorn (ceiling)", bare, {}),
    ]
    servers = [
        (
            pinned("0", [str(BIN / "fitserve"), "api"]),
            fitserve_env(database_url, ports["fitserve"]),
            targets[0],
        ),
        (
            pinned(
                "0",
                [
                    sys.executable,
                    str(ROOT / "bench" / "bare_server.py"),
                    str(work / "weights.safetensors"),
                    str(ports["bare"]),
                ],
            ),
            None,
            targets[2],
        ),
    ]
    mlflow_note = None
    if args.no_mlflow:
        mlflow_note = "skipped (--no-mlflow)"
    elif not MLFLOW_PYTHON.exists():
        mlflow_note = f"skipped: {MLFLOW_PYTHON} missing (see docs/serving.md to install it)"
    else:
        model_dir = prepare_mlflow(weights, work)
        mlflow_cli = str(MLFLOW_PYTHON.parent / "mlflow")
        command = [
            mlflow_cli,
            "models",
            "serve",
            "-m",
            str(model_dir),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(ports["mlflow"]),
            "-w",
            "1",
        ]
        mlflow_target = ("`mlflow models serve` (mlflow.pytorch)", mlflow, {})
        targets.append(mlflow_target)
        # mlflow execs `uvicorn` by name: its own venv's bin must come first on PATH.
        env = {**os.environ, "PATH": f"{MLFLOW_PYTHON.parent}:{os.environ['PATH']}"}
        servers.append((pinned("0", command), env, mlflow_target))

    results: dict[str, dict] = {}
    with ExitStack() as stack:
        for index, (command, env, (_label, url, extra)) in enumerate(servers):
            log = work / f"server-{index}.log"
            proc = stack.enter_context(process(command, log, env))
            wait_ready(url, {**extra, **one}, proc, log)
        reference = first_prediction(bare, one)
        for label, url, extra in targets:
            value = first_prediction(url, {**extra, **one})
            if abs(value - reference) > 1e-4:
                raise RuntimeError(f"{label} answers {value}, the bare server {reference}")
        for label, url, extra in targets:
            results[label] = load(
                url,
                {**extra, **one},
                duration=args.duration,
                connections=args.connections,
                work=work,
            )
            results[label]["batch_p50"] = batch_p50(url, {**extra, **batch})
    print_table(results, args, load_before, mlflow_note)
    shutil.rmtree(work, ignore_errors=True)


def print_table(
    results: dict[str, dict], args: argparse.Namespace, load_before: tuple, note: str | None
) -> None:
    bare = results["bare FastAPI + uvicorn (ceiling)"]["rps"]
    mlflow = next((r["rps"] for label, r in results.items() if label.startswith("`mlflow")), None)
    lines = [
        f"Predict benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"load average before start {load_before[0]:.2f}; wrk -t2 -c{args.connections} "
        f"-d{args.duration}s on CPU 1, each server one uvicorn process on CPU 0.",
        "",
        "| target | requests/s | p50 ms | p99 ms | vs bare | vs MLflow | 1,000-row p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        vs_mlflow = f"{r['rps'] / mlflow:.1f}x" if mlflow else "n/a"
        lines.append(
            f"| {label} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{r['rps'] / bare:.2f}x | {vs_mlflow} | {r['batch_p50']:.1f} |"
        )
    if note:
        lines.append(f"\nMLflow: {note}")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"predict-{datetime.now(UTC):%Y%m%dT%H%M%S}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
