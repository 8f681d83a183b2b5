"""The CUDA path end to end, for a machine with a GPU (never part of CI).

Usage: .venv/bin/python bench/cuda_check.py [--rows 1000000]

Trains the d2l example with the engine on cuda and on cpu and compares them; prints a speed
table of an MLP on `--rows` x 100 (cuda fp32, bf16 and compiled against cpu fp32); then starts
`fitserve serve` with a cuda worker and cuda predictions on a temporary SQLite database,
posts the run with `"device": "cuda"`, and checks the device used and the prediction.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from app.training.data import materialize
from app.training.engine import Trainer, estimation_error, warm_up
from app.training.spec import RunRequest, resolve_spec

SPEC = {
    "dataset": {"type": "synthetic_linear", "n_samples": 1000, "true_w": [2, -3.4], "true_b": 4.2},
    "optimizer": {"type": "sgd", "lr": 0.03},
    "epochs": 3,
    "batch_size": 10,
}


class Quiet:
    def interrupted(self) -> bool:
        return False

    def before_batch(self, epoch: int, batch: int, n_batches: int) -> None:
        pass

    def epoch_finished(self, report: object, trainer: Trainer) -> None:
        pass


def engine_on(device: str) -> dict:
    spec = resolve_spec(RunRequest.model_validate(SPEC))
    warm_up(torch.device(device))
    started = time.perf_counter()
    trainer = Trainer(
        spec=spec, table=materialize(spec.dataset, "regression"), device=torch.device(device)
    )
    trainer.run(Quiet())
    seconds = time.perf_counter() - started
    assert trainer.train_x.device.type == torch.device(device).type
    return {"device": device, "seconds": seconds, "error": estimation_error(trainer)}


def mlp_seconds(device: str, rows: int, **options: object) -> float:
    """Seconds per epoch (the second of two) of a 100 -> 256 -> 256 -> 10 MLP on `rows` rows."""
    spec = resolve_spec(
        RunRequest.model_validate(
            {
                "dataset": {
                    "type": "synthetic_classification",
                    "n_samples": rows,
                    "n_features": 100,
                    "n_classes": 10,
                },
                "model": {"type": "mlp", "hidden": [256, 256]},
                "optimizer": {"type": "adam", "lr": 1e-3},
                "epochs": 2,
                "batch_size": 1024,
                **options,
            }
        )
    )
    trainer = Trainer(
        spec=spec, table=materialize(spec.dataset, "classification"), device=torch.device(device)
    )
    seconds: list[float] = []

    class Timed(Quiet):
        def epoch_finished(self, report: object, trainer: Trainer) -> None:
            seconds.append(report.seconds)  # type: ignore[attr-defined]

    trainer.run(Timed())
    return seconds[-1]


def speed_table(rows: int) -> None:
    """cuda against cpu for one MLP, as a markdown table."""
    configurations = [
        ("cpu, fp32", "cpu", {}),
        ("cuda, fp32", "cuda:0", {}),
        ("cuda, bf16", "cuda:0", {"precision": "bf16"}),
        ("cuda, fp32, compile", "cuda:0", {"compile": True}),
        ("cuda, bf16, compile", "cuda:0", {"precision": "bf16", "compile": True}),
    ]
    print(f"\nMLP 100-256-256-10, {rows:,} rows, Adam, batch 1024: seconds per epoch\n")
    print("| configuration | s / epoch | speed-up vs cpu |\n|---|---:|---:|")
    baseline = None
    for label, device, options in configurations:
        seconds = mlp_seconds(device, rows, **options)
        baseline = baseline or seconds
        print(f"| {label} | {seconds:.3f} | {baseline / seconds:.1f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "torch sees no CUDA device"
    print(torch.cuda.get_device_name(0))
    for result in (engine_on("cuda:0"), engine_on("cpu")):
        print(result)
        assert max(abs(v) for v in result["error"]["w"]) < 0.01
    speed_table(args.rows)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "FITSERVE_DATABASE_URL": f"sqlite:///{tmp}/cuda.db",
            "FITSERVE_PORT": str(port),
            "FITSERVE_PREDICT_DEVICE": "cuda",
        }
        fitserve = str(Path(sys.executable).with_name("fitserve"))
        subprocess.run([fitserve, "db", "upgrade"], env=env, check=True)
        server = subprocess.Popen([fitserve, "serve"], env=env)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for _ in range(300):
                    try:
                        if client.get("/workers").json():
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                print("workers", client.get("/workers").json())
                run_id = client.post("/runs", json={**SPEC, "device": "cuda"}).json()["id"]
                while (run := client.get(f"/runs/{run_id}").json())["status"] in (
                    "queued",
                    "running",
                ):
                    time.sleep(0.1)
                print(run["status"], run["device"], run["estimation_error"], run["error"])
                assert run["status"] == "succeeded" and run["device"].startswith("cuda")
                answer = client.post("/predict", json={"run_id": run_id, "inputs": [[1, 1]]}).json()
                print("predict", answer)
                assert abs(answer["predictions"][0] - 2.8) < 0.02
        finally:
            server.terminate()
            server.wait(30)
    print("CUDA path OK")


if __name__ == "__main__":
    main()
