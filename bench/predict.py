"""Predict benchmark, side by side in one run: fitserve vs bare FastAPI vs raw ASGI vs MLflow.

Usage: .venv/bin/python bench/predict.py [--duration 10] [--connections 16] [--samples 3]
                                         [--seed 1] [--no-mlflow]

Trains one 20 -> 64 -> 1 MLP through fitserve (SQLite in a temporary folder), registers it
as `bench@production`, then serves the same weights six ways, each a single uvicorn process
pinned to CPU 0: fitserve with auth off, fitserve with auth required (a predict key in
`Authorization`) and fitserve with auth off and its metrics off (FITSERVE_METRICS=false: no
predict timing, the baseline for what metrics cost), each targeted by run id and by
name@alias, bench/bare_server.py (FastAPI),
bench/raw_asgi_server.py (a plain ASGI callable, the ceiling for anything served by uvicorn),
and `mlflow models serve` from bench/.mlflow-venv unless --no-mlflow. Every target must answer
the bare server's prediction first. Then each target gets --samples samples (3 or more) in a
seeded random order, all servers staying up: a sample is wrk (2 threads, pinned to CPU 1) for
--duration seconds after a 2 s warm-up, plus the median of 30 sequential 1,000-row requests.
The table shows per target the median over samples with their min-max, and the ratio of its
median requests/s to bare FastAPI's, raw ASGI's and MLflow's. Printed and written under
bench/results/ with the environment (cores, Python, library versions) above it.
"""

import argparse
import json
import os
import re
import shutil
import signal
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
from common import Spread, environment, free_port, sample_order
from safetensors.torch import load as load_tensors

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MLFLOW_PYTHON = ROOT / "bench" / ".mlflow-venv" / "bin" / "python"
FEATURES = 20
ROW = [round(0.1 * i - 1.0, 2) for i in range(FEATURES)]
BATCH_ROWS = 1000
OPEN_BY_ID = "fitserve `POST /predict` by run id, auth off"
OPEN_BY_NAME = "fitserve `POST /predict` by `bench@production`, auth off"
KEYED_BY_ID = "fitserve `POST /predict` by run id, auth on (predict key)"
KEYED_BY_NAME = "fitserve `POST /predict` by `bench@production`, auth on (predict key)"
UNMETERED_BY_ID = "fitserve `POST /predict` by run id, auth off, metrics off"
UNMETERED_BY_NAME = "fitserve `POST /predict` by `bench@production`, auth off, metrics off"
BARE = "bare FastAPI + uvicorn"
RAW = "raw ASGI + uvicorn (ceiling)"
MLFLOW = "`mlflow models serve` (mlflow.pytorch)"
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


def pinned(cpu: str, command: list[str]) -> list[str]:
    """`command` bound to one CPU with taskset, where taskset exists."""
    return ["taskset", "-c", cpu, *command] if shutil.which("taskset") else command


@contextmanager
def process(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """A server process in its own session, its output in `log`, killed with its children."""
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
    url: str,
    body: dict,
    headers: dict[str, str],
    proc: subprocess.Popen,
    log: Path,
    timeout: float = 120,
) -> None:
    """Post `body` to `url` until it answers 200, failing early if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}; see {log}")
        try:
            if httpx.post(url, json=body, headers=headers, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s; see {log}")


def fitserve_env(
    database_url: str, port: int, auth: str = "off", metrics: bool = True
) -> dict[str, str]:
    """The environment of a fitserve process on `database_url` listening on `port`."""
    return {
        **os.environ,
        "FITSERVE_DATABASE_URL": database_url,
        "FITSERVE_PORT": str(port),
        "FITSERVE_DEVICES": "cpu",
        "FITSERVE_AUTH": auth,
        "FITSERVE_METRICS": str(metrics).lower(),
    }


def predict_key(database_url: str) -> str:
    """A predict key for the project `default`, made with `fitserve keys create`."""
    created = subprocess.run(
        [BIN / "fitserve", "keys", "create", "--project", "default", "--role", "predict"],
        env=fitserve_env(database_url, 0),
        check=True,
        capture_output=True,
        text=True,
    )
    return created.stdout.splitlines()[-1]


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
    """wrk's command name, installing it with apt-get if it is missing."""
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, stdout=subprocess.DEVNULL)
    return "wrk"


def to_ms(value: str, unit: str) -> float:
    """A wrk duration such as `2.31ms` in milliseconds."""
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def load(
    url: str,
    body: dict,
    headers: dict[str, str],
    *,
    duration: int,
    connections: int,
    work: Path,
) -> dict:
    """wrk against one endpoint: requests/s, p50 and p99 in ms, non-2xx answers."""
    # Keyed by body too: fitserve's two targets share a URL.
    script = work / f"post-{abs(hash((url, json.dumps(body))))}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{json.dumps(body)}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        + "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items())
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


def batch_p50(url: str, body: dict, headers: dict[str, str], *, repeats: int = 30) -> float:
    """Median latency in ms of a 1,000-row request, one at a time from this process."""
    with httpx.Client(timeout=60, headers=headers) as client:
        client.post(url, json=body).raise_for_status()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            client.post(url, json=body).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def first_prediction(url: str, body: dict, headers: dict[str, str]) -> float:
    """The first output of one prediction, to check that every target runs the same model."""
    answer = httpx.post(url, json=body, headers=headers).json()
    value = answer["predictions"][0]
    return float(value[0] if isinstance(value, list) else value)


def prepare_mlflow(weights: bytes, work: Path) -> Path:
    """Log the same weights as an mlflow.pytorch model with bench/mlflow_model.py; its folder."""
    state = work / "state.pt"
    torch.save(load_tensors(weights), state)
    model_dir = work / "mlflow-model"
    subprocess.run(
        [str(MLFLOW_PYTHON), str(ROOT / "bench" / "mlflow_model.py"), str(state), str(model_dir)],
        check=True,
        capture_output=True,
    )
    return model_dir


def mlflow_version() -> str:
    """mlflow's version in bench/.mlflow-venv."""
    return subprocess.run(
        [str(MLFLOW_PYTHON), "-c", "import importlib.metadata as m; print(m.version('mlflow'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def main() -> None:
    """Train, start every server, check they agree, load them in a random order, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per sample")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--samples", type=int, default=3, help="samples per target")
    parser.add_argument("--seed", type=int, default=1, help="seeds the order of the samples")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    if args.samples < 3:
        parser.error("--samples must be at least 3")
    ensure_wrk()
    use_mlflow = not args.no_mlflow and MLFLOW_PYTHON.exists()
    # Taken before training, which loads the CPUs and would inflate the load average.
    header = environment({"mlflow": mlflow_version()} if use_mlflow else None)
    work = Path(tempfile.mkdtemp(prefix="fitserve-bench-"))
    database_url = f"sqlite:///{work / 'bench.db'}"
    run_id, weights = train(database_url, work)
    weights_file = work / "weights.safetensors"
    weights_file.write_bytes(weights)
    authorized = {"Authorization": f"Bearer {predict_key(database_url)}"}

    names = ("fitserve", "secured", "unmetered", "bare", "raw", "mlflow")
    ports = {name: free_port() for name in names}
    fitserve = f"http://127.0.0.1:{ports['fitserve']}"
    secured = f"http://127.0.0.1:{ports['secured']}"
    unmetered = f"http://127.0.0.1:{ports['unmetered']}"
    bare = f"http://127.0.0.1:{ports['bare']}/predict"
    raw = f"http://127.0.0.1:{ports['raw']}/predict"
    mlflow = f"http://127.0.0.1:{ports['mlflow']}/invocations"
    one = {"inputs": [ROW]}
    batch = {"inputs": [ROW] * BATCH_ROWS}
    by_id, by_name = {"run_id": run_id}, {"model": "bench@production"}
    targets = [
        (OPEN_BY_ID, f"{fitserve}/predict", by_id, {}),
        (OPEN_BY_NAME, f"{fitserve}/predict", by_name, {}),
        (BARE, bare, {}, {}),
        (RAW, raw, {}, {}),
        (KEYED_BY_ID, f"{secured}/predict", by_id, authorized),
        (KEYED_BY_NAME, f"{secured}/predict", by_name, authorized),
        (UNMETERED_BY_ID, f"{unmetered}/predict", by_id, {}),
        (UNMETERED_BY_NAME, f"{unmetered}/predict", by_name, {}),
    ]
    # The comparison servers differ only in their script: each serves the same weights file.
    servers = [
        (
            pinned("0", [str(BIN / "fitserve"), "api"]),
            fitserve_env(database_url, ports["fitserve"]),
            targets[0],
        ),
        (
            pinned("0", [str(BIN / "fitserve"), "api"]),
            fitserve_env(database_url, ports["secured"], auth="required"),
            targets[4],
        ),
        (
            pinned("0", [str(BIN / "fitserve"), "api"]),
            fitserve_env(database_url, ports["unmetered"], metrics=False),
            targets[6],
        ),
        *(
            (
                pinned(
                    "0",
                    [
                        sys.executable,
                        str(ROOT / "bench" / script),
                        str(weights_file),
                        str(ports[port]),
                    ],
                ),
                None,
                target,
            )
            for script, port, target in (
                ("bare_server.py", "bare", targets[2]),
                ("raw_asgi_server.py", "raw", targets[3]),
            )
        ),
    ]
    mlflow_note = None
    if args.no_mlflow:
        mlflow_note = "skipped (--no-mlflow)"
    elif not use_mlflow:
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
        mlflow_target = (MLFLOW, mlflow, {}, {})
        targets.append(mlflow_target)
        # mlflow execs `uvicorn` by name: its own venv's bin must come first on PATH.
        env = {**os.environ, "PATH": f"{MLFLOW_PYTHON.parent}:{os.environ['PATH']}"}
        servers.append((pinned("0", command), env, mlflow_target))

    order = sample_order([label for label, *_ in targets], args.samples, args.seed)
    header.append(
        f"wrk -t2 -c{args.connections} -d{args.duration}s (after 2 s of warm-up) on CPU 1, "
        f"each server one uvicorn process on CPU 0; {args.samples} samples per target, "
        f"seed {args.seed}, order: " + ", ".join(f"{label} #{n}" for label, n in order)
    )
    print("\n".join(header), flush=True)
    results: dict[str, list[dict]] = {label: [] for label, *_ in targets}
    bodies = {
        label: (url, {**extra, **one}, {**extra, **batch}, headers)
        for label, url, extra, headers in targets
    }
    with ExitStack() as stack:
        for index, (command, env, (_label, url, extra, headers)) in enumerate(servers):
            log = work / f"server-{index}.log"
            proc = stack.enter_context(process(command, log, env))
            wait_ready(url, {**extra, **one}, headers, proc, log)
        reference = first_prediction(bare, one, {})
        for label, url, extra, headers in targets:
            value = first_prediction(url, {**extra, **one}, headers)
            if abs(value - reference) > 1e-4:
                raise RuntimeError(f"{label} answers {value}, the bare server {reference}")
        for position, (label, sample) in enumerate(order, 1):
            url, body, batch_body, headers = bodies[label]
            result = load(
                url,
                body,
                headers,
                duration=args.duration,
                connections=args.connections,
                work=work,
            )
            result["batch_p50"] = batch_p50(url, batch_body, headers)
            results[label].append(result)
            print(
                f"[{position}/{len(order)}] {label} #{sample}: {result['rps']:.0f} requests/s",
                flush=True,
            )
    print_table(results, header, mlflow_note)
    shutil.rmtree(work, ignore_errors=True)


def print_table(results: dict[str, list[dict]], header: list[str], note: str | None) -> None:
    """The markdown table, medians over samples with min-max, printed and saved."""
    summary = {
        label: {key: Spread.of([sample[key] for sample in samples]) for key in samples[0]}
        for label, samples in results.items()
    }
    bare = summary[BARE]["rps"].median
    raw = summary[RAW]["rps"].median
    mlflow = summary[MLFLOW]["rps"].median if MLFLOW in summary else None
    lines = [
        f"Predict benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        *header,
        "",
        "Each cell: median over samples (min-max); ratios are of median requests/s.",
        "",
        "| target | requests/s | p50 ms | p99 ms | vs bare FastAPI | vs raw ASGI | vs MLflow "
        "| 1,000-row p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in summary.items():
        vs_mlflow = f"{s['rps'].median / mlflow:.1f}x" if mlflow else "n/a"
        lines.append(
            f"| {label} | {s['rps'].format(0)} | {s['p50'].format(2)} | {s['p99'].format(2)} "
            f"| {s['rps'].median / bare:.2f}x | {s['rps'].median / raw:.2f}x | {vs_mlflow} "
            f"| {s['batch_p50'].format(1)} |"
        )
    auth_cost = ", ".join(
        f"{keyed}: {summary[keyed]['rps'].median / summary[open_]['rps'].median:.2f}x"
        for keyed, open_ in ((KEYED_BY_ID, OPEN_BY_ID), (KEYED_BY_NAME, OPEN_BY_NAME))
    )
    lines.append(f"\nAuth on vs auth off (median requests/s): {auth_cost}")
    metrics_cost = ", ".join(
        f"{metered}: {summary[metered]['rps'].median / summary[unmetered]['rps'].median:.2f}x"
        for metered, unmetered in ((OPEN_BY_ID, UNMETERED_BY_ID), (OPEN_BY_NAME, UNMETERED_BY_NAME))
    )
    lines.append(f"\nMetrics on vs metrics off (median requests/s): {metrics_cost}")
    if note:
        lines.append(f"\nMLflow: {note}")
    text = "\n".join(lines)
    print()
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"predict-{datetime.now(UTC):%Y%m%dT%H%M%S}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
